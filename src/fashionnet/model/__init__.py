"""The network (Keras 3, backend-agnostic: only keras.layers / keras.ops)."""
