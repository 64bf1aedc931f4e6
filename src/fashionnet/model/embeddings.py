"""A head's features as a model output: what its out-of-set rule measures (`open_set`).

Every head ends in a ``<head>_logits`` dense layer; its input is the head's own feature
vector. `with_embeddings` returns the same network with those vectors as extra outputs, after
the heads' probabilities, named ``<head>_embedding`` (the ONNX export keeps the names).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec
from fashionnet.open_set import MAX_EMBEDDING, default_score, embedding_name


def embedding_width(model: keras.Model, head: str) -> int | None:
    """The width of a head's features, or None when the model has no ``<head>_logits``."""
    try:
        layer = model.get_layer(f"{head}_logits")
    except ValueError:
        return None
    return int(layer.input.shape[-1])


def embedded_heads(model: keras.Model, heads: Sequence[HeadSpec]) -> list[str]:
    """The heads whose out-of-set rule reads their features (`default_score` ``embedding``),
    where the model has them and they are narrow enough for labels.json."""
    return [h.name for h in heads if default_score(h) == "embedding"
            and 0 < (embedding_width(model, h.name) or 0) <= MAX_EMBEDDING]


def with_embeddings(model: keras.Model, heads: Sequence[str]) -> keras.Model:
    """``model`` with each named head's features appended to its outputs."""
    if not heads:
        return model
    extra = []
    for head in heads:
        try:
            extra.append(model.get_layer(f"{head}_logits").input)
        except ValueError:
            raise FashionNetError(f"the model has no {head}_logits layer: head {head!r} has "
                                  f"no features for an out-of-set rule") from None
    outputs = list(model.outputs) + extra
    names = list(model.output_names) + [embedding_name(h) for h in heads]
    # Identity layers give the new outputs their names (an output's name is its layer's).
    named = [keras.layers.Identity(name=n)(t) if i >= len(model.outputs) else t
             for i, (n, t) in enumerate(zip(names, outputs))]
    return keras.Model(model.input, named, name=model.name)
