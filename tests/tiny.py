"""Tiny configurations shared by the tests: small enough that the whole suite runs in minutes on 2 CPU cores."""


def tiny_params(**overrides):
    """A 16 px, 2x2-patch model with ~30 k parameters and T=20."""
    params = dict(image_size=16, channels=3, patches=2, dim=16, dim_mults=(1, 2), attn_heads=2,
                  attn_dim_head=8, timesteps=20, batch_size=4, steps=4, log_every=1, checkpoint_every=2,
                  sample_count=4, sample_steps=3, dataset_size=64, device="cpu")
    params.update(overrides)
    return params


def tiny_flags(**overrides):
    """The command-line options of :func:`tiny_params` (for ``patchlab train``), e.g. ``--dim-mults 1,2``."""
    out = []
    for key, value in tiny_params(**overrides).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out
