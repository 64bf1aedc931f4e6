from fashionnet.demo import run_demo


def test_demo_runs_end_to_end_and_reports_held_out_combinations(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", epochs=1, per_combination=5, input_size=32, verbose=0)
    out = capsys.readouterr().out
    assert "held-out combinations" in out and "model bundle:" in out
    assert result.unseen["count"] == 15  # 3 held-out combinations x 5 images
    assert set(result.seen["heads"]) == {"color", "category"}
    assert (result.bundle / "model.keras").is_file()
