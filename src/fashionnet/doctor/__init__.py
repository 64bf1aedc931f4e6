"""`fashionnet doctor`: what is wrong with a dataset, before and after training.

Built on the libraries made for it (the ``doctor`` extra): cleanvision for image quality and
duplicates, cleanlab's `Datalab` for label issues, outliers and near duplicates from a trained
run's out-of-sample probabilities and embeddings. This package only gathers their findings
into one row per image and issue, and writes the report.

    from fashionnet.doctor import run_doctor
    result = run_doctor("photos/", "doctor/", model="runs/mine")
    result.counts()   # {"label_issue": 12, "near_duplicate": 40, ...}
"""

from fashionnet.doctor.issues import ISSUE_TYPES, DoctorResult, Issue
from fashionnet.doctor.run import run_doctor

__all__ = ["ISSUE_TYPES", "DoctorResult", "Issue", "run_doctor"]
