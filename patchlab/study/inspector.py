"""The seam inspector: patch borders of N = 2 models through the denoising, as an ipywidgets view.

Built from the recorded :class:`patchlab.trajectory.Trajectory` of each model (the same noise for
all), it shows one image at one denoising step with the patch borders and a zoom window on a chosen
border, the intensity profile across that border, and its seam score
(:func:`patchlab.metrics.seam_scores`; 1 = no seam). Controls: sliders for the step, the sample and
the zoom position along the border; the border line; x_t or the predicted x0; the overlay; and
toggles for position and GCC, which pick the model (the paper's ablations).

:meth:`SeamInspector.view` computes everything a frame shows as plain arrays (tested without a
browser); :attr:`SeamInspector.widget` wires it to the widgets.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from .. import metrics as M
from .. import patches as P
from .. import tiling as T
from .. import viz
from ..trajectory import Trajectory
from . import plots

# (position, gcc, windows) -> the label of the N = 2 model with those switches and sampler windows (see
# patchlab.study.variants.ABLATIONS and REMEDIES)
MODELS = {(True, True, "grid"): "N=2", (False, True, "grid"): "N=2 no position", (True, False, "grid"): "N=2 no GCC",
          (False, False, "grid"): "N=2 neither", (True, True, "shifted"): "N=2 shifted",
          (True, True, "overlap"): "N=2 overlap", (True, True, "global"): "N=2 global"}
SHOW = ("x_t", "predicted x0")
ZOOM_COLOR = np.array([255, 210, 0], dtype=np.uint8)


@dataclass(frozen=True)
class View:
    """What the inspector shows for one state."""

    label: str  # the model
    frame: int
    timestep: int  # -1 for the finished images
    image: np.ndarray  # [H*s x W*s x 3] uint8: the image, upscaled, borders and zoom box drawn
    zoom: np.ndarray  # [h x w x 3] uint8: the zoom window, upscaled
    profile: np.ndarray  # [C x L] intensities (0..255) along the line across the border
    border_at: int  # index into ``profile`` of the first pixel past the border
    seam_sample: float  # seam score of this image at this step (all its borders)
    seam_line: float  # seam score of the chosen border line on this image
    seam_all: float  # seam score of all the model's images at this step

    def caption(self, border: str) -> str:
        when = "finished" if self.timestep < 0 else f"t = {self.timestep}"
        return (f"{self.label}, frame {self.frame} ({when}): seam score {self.seam_sample:.3f} "
                f"(border {border}: {self.seam_line:.3f}); all samples {self.seam_all:.3f}; 1 = no seam")


class SeamInspector:
    """Interactive view of the trajectories ``{label: Trajectory}`` of models with ``patches`` x ``patches``
    patches (labels as in :data:`MODELS`); ``tilings`` {label: :class:`patchlab.tiling.Tiling`} of their
    samplers (default the fixed grid), for the seam remedies, whose borders move: the overlay shows the
    windows of the step on view, and the seam scores look at every line where a border fell.
    ``timesteps``: the diffusion's T (which steps coarse to fine denoised from the global view, which has no
    border)."""

    def __init__(self, trajectories: dict[str, Trajectory], patches: int, *, display_size: int = 256,
                 tilings: dict | None = None, timesteps: int = 1000):
        if not trajectories:
            raise ValueError("the seam inspector needs at least one model's trajectory")
        first = next(iter(trajectories.values()))
        size = first.x_t.shape[-1]
        if patches < 2 or P.patch_size(size, patches) < 3:
            raise ValueError(f"the seam inspector needs N >= 2 and patches of at least 3 pixels, got N={patches} "
                             f"at {size} px")
        self.trajectories, self.patches, self.size, self.timesteps = dict(trajectories), patches, size, timesteps
        self.scale = max(1, display_size // size)
        self.tilings = {label: (tilings or {}).get(label) or _fixed_grid(size, patches) for label in self.trajectories}
        self.lines = {label: tiling.seam_lines(self.trajectories[label].frames)
                      for label, tiling in self.tilings.items()}
        union = sorted({b for lines in self.lines.values() for b in lines if 3 <= b <= size - 3})
        self.borders = [f"{axis}{b}" for axis in "vh" for b in union]
        self.state = {"label": next(iter(trajectories)), "frame": first.frames - 1, "sample": 0,
                      "border": self.borders[0], "along": size // 2, "overlay": True, "show": SHOW[0]}
        self._widget = None

    @classmethod
    def from_runs(cls, runs, *, n: int, steps: int, seed: int = 0, patch_mode="batched", device="auto",
                  progress: bool = True) -> "SeamInspector":
        """Record ``n`` DDIM samples (``steps`` steps, noise from ``seed``) of each run of
        :class:`patchlab.study.variants.Run` s with N >= 2 (the same N for all)."""
        from tqdm.auto import tqdm

        from .measure import trajectory

        runs = list(runs)
        sizes = {r.patches for r in runs}
        if len(sizes) != 1:
            raise ValueError(f"the runs must share one N, got {sorted(sizes)}")
        trajs = {r.label: trajectory(r, n, steps=steps, seed=seed, patch_mode=patch_mode, device=device)
                 for r in tqdm(runs, desc="recording trajectories", disable=not progress)}
        return cls(trajs, sizes.pop(), tilings={r.label: r.tiling for r in runs},
                   timesteps=runs[0].config.diffusion.timesteps)

    # --- the computation of one view ----------------------------------------------------------

    def view(self, **changes) -> View:
        """The :class:`View` of the current state with ``changes`` applied (the state is not modified)."""
        s = {**self.state, **changes}
        traj = self.trajectories[s["label"]]
        stack = (traj.x_t if s["show"] == SHOW[0] else traj.x0)[s["frame"]]  # [n x C x H x W]
        image = stack[s["sample"]:s["sample"] + 1]
        axis, at = s["border"][0], int(s["border"][1:])
        along = min(max(int(s["along"]), 0), self.size - 1)
        ps = P.patch_size(self.size, self.patches)

        pixels = viz.to_uint8(image)[0]  # [H x W x 3]
        step = min(s["frame"], traj.frames - 2)  # the windows of the step on view (the global view has none)
        now = self.tilings[s["label"]].plan(step, traj.timesteps[step], self.timesteps).lines(self.size, self.patches)
        shown = viz.overlay_lines(pixels[None], now, now)[0] if s["overlay"] else pixels
        half = max(2, ps // 2)
        rows, cols = ((along - half, along + half), (at - half, at + half)) if axis == "v" else \
            ((at - half, at + half), (along - half, along + half))
        rows, cols = _clip(rows, self.size), _clip(cols, self.size)
        big = shown.repeat(self.scale, 0).repeat(self.scale, 1)
        _box(big, [r * self.scale for r in rows], [c * self.scale for c in cols])
        zoom = shown[rows[0]:rows[1], cols[0]:cols[1]]
        zscale = max(1, 160 // max(zoom.shape[:2]))
        zoom = zoom.repeat(zscale, 0).repeat(zscale, 1)

        channels = image.shape[1]
        values = ((image[0].clamp(-1, 1) + 1) * 127.5).numpy()  # [C x H x W]
        lo, hi = max(0, at - ps), min(self.size, at + ps)
        line = values[:, along, lo:hi] if axis == "v" else values[:, lo:hi, along]
        lines = self.lines[s["label"]]
        return View(label=s["label"], frame=s["frame"], timestep=traj.timesteps[s["frame"]], image=big, zoom=zoom,
                    profile=line.reshape(channels, -1), border_at=at - lo,
                    seam_sample=M.seam_score(image, self.patches, lines=lines),
                    seam_line=M.seam_scores(image, self.patches, lines=[at]).borders[s["border"]],
                    seam_all=M.seam_score(stack, self.patches, lines=lines))

    def figure(self, **changes):
        """A matplotlib figure of the view: image, zoom window and profile (for :meth:`save`)."""
        from matplotlib.figure import Figure

        v = self.view(**changes)
        border = {**self.state, **changes}["border"]
        fig = Figure(figsize=(11, 3.4))
        for i, (img, title) in enumerate(((v.image, v.label), (v.zoom, f"zoom on border {border}"))):
            ax = fig.add_subplot(1, 3, i + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = fig.add_subplot(1, 3, 3)
        _draw_profile(ax, v)
        fig.suptitle(v.caption(border), fontsize=9)
        fig.tight_layout()
        return fig

    def save(self, path, **changes):
        """Write :meth:`figure` as PNG to ``path``; returns it as an image for the notebook."""
        from IPython.display import Image

        return Image(filename=str(plots.save(self.figure(**changes), path)))

    # --- widgets -----------------------------------------------------------------------------

    @property
    def widget(self):
        """The ipywidgets box (built on first use)."""
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self):
        import ipywidgets as w

        traj = self.trajectories[self.state["label"]]
        n = traj.x_t.shape[1]
        style = {"description_width": "140px"}
        layout = w.Layout(width="460px")
        c = self.controls = {
            "frame": w.IntSlider(value=self.state["frame"], min=0, max=traj.frames - 1, description="denoising step",
                                 style=style, layout=layout, continuous_update=False),
            "sample": w.IntSlider(value=0, min=0, max=n - 1, description="sample", style=style, layout=layout,
                                  continuous_update=False),
            "along": w.IntSlider(value=self.state["along"], min=0, max=self.size - 1, description="zoom along border",
                                 style=style, layout=layout, continuous_update=False),
            "border": w.Dropdown(options=[(_border_name(b), b) for b in self.borders], value=self.state["border"],
                                 description="border", style=style),
            "show": w.ToggleButtons(options=list(SHOW), value=self.state["show"], description="show", style=style),
            "overlay": w.Checkbox(value=True, description="border overlay", style=style),
            "position": w.ToggleButtons(options=[("on", True), ("off", False)], description="position",
                                        value=self._switch(0), style=style),
            "gcc": w.ToggleButtons(options=[("on", True), ("off", False)], description="GCC", value=self._switch(1),
                                   style=style),
            "windows": w.ToggleButtons(options=list(T.NAMES), value=self._switch(2), description="windows",
                                       tooltips=[T.TILINGS[name].doc for name in T.NAMES], style=style),
        }
        self.image = w.Image(format="png")
        self.zoom = w.Image(format="png")
        self.profile = w.Image(format="png")
        self.score = w.HTML()
        for name, widget in {**c, "image": self.image, "zoom": self.zoom, "profile": self.profile,
                             "score": self.score}.items():
            widget.add_class(f"patchlab-{name}")
        for widget in c.values():
            widget.observe(self._changed, names="value")
        self._render()
        controls = w.VBox([c["position"], c["gcc"], c["windows"], c["show"], c["frame"], c["sample"], c["border"],
                           c["along"], c["overlay"]])
        pictures = w.HBox([self.image, w.VBox([self.zoom]), self.profile])
        return w.VBox([controls, self.score, pictures])

    def _switch(self, which: int):
        key = next(k for k, label in MODELS.items() if label == self.state["label"]) \
            if self.state["label"] in MODELS.values() else (True, True, "grid")
        return key[which]

    def _changed(self, change) -> None:
        c = self.controls
        switches = (c["position"].value, c["gcc"].value, c["windows"].value)
        wanted = MODELS.get(switches)
        self.state.update(frame=c["frame"].value, sample=c["sample"].value, along=c["along"].value,
                          border=c["border"].value, show=c["show"].value, overlay=c["overlay"].value)
        if wanted in self.trajectories:
            self.state["label"] = wanted
        self._render(missing=None if wanted in self.trajectories else wanted or "that combination")

    def _render(self, missing: str | None = None) -> None:
        from matplotlib.figure import Figure

        v = self.view()
        self.image.value = _png(v.image)
        self.zoom.value = _png(v.zoom)
        fig = Figure(figsize=(4.6, 2.8))
        _draw_profile(fig.add_subplot(), v)
        fig.tight_layout()
        self.profile.value = plots.png_bytes(fig)
        note = f" <i>(no run for {missing}; showing {v.label})</i>" if missing else ""
        self.score.value = (f"<b>{v.label}</b>, step {v.frame} of {self.trajectories[v.label].frames - 1} "
                            f"({'finished' if v.timestep < 0 else f't = {v.timestep}'}): seam score "
                            f"<span class='patchlab-seam'>{v.seam_sample:.4f}</span> for this sample "
                            f"(border {self.state['border']}: {v.seam_line:.4f}), {v.seam_all:.4f} for all samples"
                            f" (1 = no seam){note}")


def _clip(span: tuple[int, int], size: int) -> tuple[int, int]:
    lo, hi = span
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > size:
        lo, hi = max(0, lo - (hi - size)), size
    return lo, hi


def _box(img: np.ndarray, rows, cols) -> None:
    """Draw a rectangle outline (2 px) in place on an [H x W x 3] uint8 image."""
    r0, r1 = rows
    c0, c1 = cols
    r1, c1 = min(r1, img.shape[0]) - 1, min(c1, img.shape[1]) - 1
    for r in (r0, r0 + 1, r1 - 1, r1):
        img[r, c0:c1 + 1] = ZOOM_COLOR
    for c in (c0, c0 + 1, c1 - 1, c1):
        img[r0:r1 + 1, c] = ZOOM_COLOR


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="png")
    return buf.getvalue()


def _border_name(border: str) -> str:
    return f"{'vertical' if border[0] == 'v' else 'horizontal'} at {border[1:]} px"


def _draw_profile(ax, v: View) -> None:
    colors = ("tab:red", "tab:green", "tab:blue") if v.profile.shape[0] == 3 else ("0.2",)
    names = ("R", "G", "B") if v.profile.shape[0] == 3 else ("gray",)
    x = np.arange(v.profile.shape[1])
    for c in range(v.profile.shape[0]):
        ax.plot(x, v.profile[c], marker="o", ms=3, lw=1.2, color=colors[c], label=names[c])
    ax.axvline(v.border_at - 0.5, color="k", ls="--", lw=1, label="border")
    ax.set_ylim(-5, 260)
    ax.set_xlabel("pixel across the border")
    ax.set_ylabel("intensity")
    ax.set_title(f"seam score: this line {v.seam_line:.3f}, image {v.seam_sample:.3f}", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.grid(alpha=0.3)


def _fixed_grid(size: int, patches: int) -> "T.Grid":
    """The fixed grid of N = ``patches`` at ``size`` px (the tiling of a trajectory given without one)."""
    from ..config import ModelConfig

    return T.Grid(ModelConfig(image_size=size, patches=patches, dim_mults=(1,)))
