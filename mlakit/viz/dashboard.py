"""An ipywidgets dashboard for the KV cache: pick a model, a context, a batch, a precision and a GPU.

``cache_dashboard("deepseek-v3")`` shows a live plot of cache size against
context with a marker at the chosen context, and live numbers: the cache in
GB, how many times smaller it is than the same model with plain MHA, bytes
per token, the weights, and the longest context that fits beside them. A
second tab splits DeepSeek-V2's "KV cache reduced by 93.3%" into what MLA
and what the 6-bit cache save. Every number comes from :mod:`mlakit.kvcache`.

How "fits beside the weights" is counted (an upper bound):

- weights take ``parameter_count(config)[0]`` parameters (all experts, the
  MTP modules left out) at the chosen precision (one precision for weights
  and cache, as a what-if);
- if they fit on one GPU, the cache gets the rest of that GPU;
- if they do not ("weights alone exceed one GPU", as for DeepSeek-V3 or a
  70B model in bf16 on one 80 GB GPU), the model is counted on one node of
  8 GPUs: weights spread over the node, the cache gets the node's memory left
  over (the sum over its 8 GPUs);
- if the weights exceed even the node, no context fits and the numbers say so.

Activations, framework buffers and fragmentation are ignored, so real
deployments fit less. The longest context is also not capped at the model's
trained context (``max_position_embeddings``); the numbers show both.

Numbers and plot change together: an update computes the numbers, draws the
plot to a PNG, and only then hands both to the widgets, one right after the
other, so the page never shows a plot of an earlier state beside the new
numbers. Rapid moves are coalesced by the frontend: while the kernel works on
one change of a control, ipywidgets keeps only the latest value of further
changes and sends it when the kernel is idle, so a burst of keyboard steps
ends with the plot and the numbers of the last step.

For testing without a browser: callbacks are named methods
(:meth:`CacheDashboard.on_preset`, :meth:`CacheDashboard.update`) that read
the widget values, compute a small ``state`` dict and update the widgets, so
``dash.controls["context"].value = 4096`` followed by reading
``dash.state["cache_gb"]`` works in plain pytest.

Each dashboard keeps its own settings: ``cache_dashboard("deepseek-v3",
precision="fp8")`` builds one with some controls set, and ``dash.copy(...)``
a new one from another's settings, so a notebook that shows several settings
shows several dashboards instead of moving one it displayed earlier (a
displayed widget always shows its latest state, also in the saved notebook).

Layout (sizes in CSS px at ipywidgets' font size, 13 px): every control is
:data:`CONTROL_PX` wide with a :data:`LABEL_PX` label, wide enough for its
whole label, its value and a slider's readout beside it; the numbers table
(:data:`NUMBERS_PX`) sits beside the controls when the output area is wide
enough (a notebook in a 1280 px browser window: about 1,100 px), below them
otherwise; nothing shrinks, so nothing is cut or wraps. Every label sits
beside its control, right-aligned, the toggle buttons' too (ipywidgets 8
stacks a ToggleButtons' label above its buttons unless it gets the inline
class the sliders have). The plot's legend sits below the axes, in as many
columns as fit the figure's width, with the bottom margin measured to hold
it, so no label is cut at any setting. Where widgets cannot
be drawn (a static view of the notebook, a web page made from it), the
display shows a PNG of the dashboard's plot and a line of its numbers.
"""

from __future__ import annotations

import base64
import io

import ipywidgets as widgets

from ..config import PRESETS, ModelConfig
from ..kvcache import (
    bytes_per_token,
    cache_bytes,
    decompose_v2_headline,
    dtype_bits,
    elements_per_token,
    elements_per_token_all_layers,
    ratio_to_mha,
)
from ..params import count_parameters
from .cache import (
    GB,
    GPU_MEMORY_GB,
    context_label,
    dtype_label,
    plot_cache_vs_context,
    plot_v2_headline,
)

NODE_GPUS = 8  # GPUs in one server node (HGX H100 / H200): where a model goes when one GPU is too small
PRECISIONS = {"fp32": "fp32", "bf16": "bf16", "fp8": "fp8", "6-bit": 6}  # label -> kvcache dtype
CONTEXTS = tuple(2**k for k in range(10, 21))  # 1k .. 1M tokens, doubling
MLA_PRESETS = ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite")  # each also offered with plain MHA
MLA_CONTROLS = ("kv_lora_rank", "qk_rope_head_dim")  # the sliders that only an MLA model uses

# Layout, in CSS px at ipywidgets' font size (13 px, --jp-widgets-font-size). A label is LABEL_PX wide
# (the longest, "kv_lora_rank d_c", takes about 110 px) plus 8 px of margin; buttons have 10 px of
# padding on each side and 2 px of margin; a control in a box has 2 px of margin on each side.
LABEL_PX = 140
CONTROL_PX = 500  # every control
WIDGET_MARGIN_PX = 2  # ipywidgets' margin around a control (--jp-widgets-margin)
BUTTON_PX = {"precision": 60, "gpu": 120}  # one toggle button; the longest labels: "6-bit", "141 GB H200"
NUMBERS_PX = 500  # the table of numbers, beside the controls (below them when the output area is narrower)
GAP_PX = 16  # between the controls and the table
INLINE_CLASSES = ("widget-inline-hbox", "jupyter-widget-inline-hbox")  # ipywidgets 8: label beside, right-aligned
FIGURE_IN = (8.5, 4.6)  # the plot, in inches at 100 dpi: 850 px wide, fits the output area at 1280 px
LEGEND_FONT = 9


def _model_choices() -> dict[str, str]:
    """Dropdown value -> label: the presets, and the DeepSeek MLA presets redone with plain MHA."""
    choices = {}
    for name in ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "deepseek-67b", "llama3-70b-gqa",
                 "llama3-70b-mha", "nano"):
        choices[name] = name
        if name in MLA_PRESETS:
            choices[f"{name}-mha"] = f"{name}, with MHA"
    return choices


MODEL_CHOICES = _model_choices()


def dashboard_config(name: str) -> ModelConfig:
    """The config behind a dropdown value: a preset, or "<preset>-mha" for an MLA preset with plain MHA."""
    if name in PRESETS:
        return ModelConfig.from_preset(name)
    base = name.removesuffix("-mha")
    if name.endswith("-mha") and base in MLA_PRESETS:
        return ModelConfig.from_preset(base).variant("mha")
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_CHOICES)}")


def parameter_count(config: ModelConfig) -> tuple[int, int]:
    """(total, active per token) parameters of ``config``: :func:`mlakit.params.count_parameters`, the
    course's one counter, instant for any size (MTP modules and the balancing bias left out).
    Against the released checkpoints: DeepSeek-V3 671.0B / 37.6B, V2 235.7B / 21.4B (the papers
    quote 671B / 37B and 236B / 21B)."""
    return count_parameters(config), count_parameters(config, active=True)


def longest_context(config: ModelConfig, dtype, batch_size: int, gpu_gb: float) -> dict:
    """Where the weights go and the longest context whose cache fits beside them (see the module docstring).

    Returns {"gpus": 1, 8 or 0 (weights exceed a node), "weights_bytes",
    "free_bytes", "max_context", "max_context_cache_only"}; the last is one
    whole GPU given to the cache of ``batch_size`` sequences, weights ignored.
    """
    bits = dtype_bits(dtype)
    total, _ = parameter_count(config)
    gpu_bits = int(gpu_gb * GB) * 8
    bits_per_position = elements_per_token_all_layers(config) * bits * batch_size  # all sequences of the batch
    gpus = next((n for n in (1, NODE_GPUS) if total * bits <= n * gpu_bits), 0)
    free_bits = max(gpus * gpu_bits - total * bits, 0)
    return {"gpus": gpus, "weights_bytes": total * bits / 8, "free_bytes": free_bits / 8,
            "max_context": free_bits // bits_per_position, "max_context_cache_only": gpu_bits // bits_per_position}


def _png_output(fig) -> dict:
    """A display_data output holding ``fig`` as a PNG, for ``Output.outputs`` (works with or without a kernel)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # fixed margins, not bbox_inches="tight": half the time per redraw
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": repr(fig)}}


def _gb(x: float) -> str:
    """GB to three significant digits without an exponent: 0.0503, 9.21, 147, 8,384."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _row(name: str, value: str) -> str:
    return f"<tr><td style='padding-right:1em'>{name}</td><td style='text-align:right'><b>{value}</b></td></tr>"


class CacheDashboard:
    """The dashboard: ``controls`` (dict of widgets), ``state`` (the numbers shown), ``widget`` (top container).

    ``state`` keys: cache_gb, cache_bytes, ratio_to_mha, bytes_per_token (one
    sequence, all layers), elements_per_token (per layer), max_context,
    max_context_cache_only, gpus, weights_gb, parameters_total/active, fits,
    the chosen values (model, context, batch_size, precision, dtype, gpu,
    gpu_gb), config, error (None, or why the sliders give no valid model) and
    headline (the numbers of the "V2 headline" tab).
    """

    def __init__(self, preset: str = "deepseek-v3", **values):
        """A dashboard for ``preset`` with the controls named in ``values`` set (as :meth:`set` takes them)."""
        if preset not in MODEL_CHOICES:
            raise ValueError(f"unknown model {preset!r}; valid: {', '.join(MODEL_CHOICES)}")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        style = {"description_width": f"{LABEL_PX}px"}

        def fixed(width):  # a fixed width that never shrinks in a row
            return widgets.Layout(width=f"{width}px", flex="0 0 auto")

        self.controls = {
            "preset": widgets.Dropdown(options=[(label, key) for key, label in MODEL_CHOICES.items()],
                                       value=preset, description="model", style=style, layout=fixed(CONTROL_PX)),
            "context": widgets.SelectionSlider(options=[(context_label(t), t) for t in CONTEXTS], value=128 * 1024,
                                               description="context", style=style, layout=fixed(CONTROL_PX)),
            "batch_size": widgets.IntSlider(value=1, min=1, max=128, description="batch size", style=style,
                                            layout=fixed(CONTROL_PX)),
            "precision": widgets.ToggleButtons(options=list(PRECISIONS), value="bf16", description="precision",
                                               style={**style, "button_width": f"{BUTTON_PX['precision']}px"},
                                               layout=fixed(CONTROL_PX)),
            "gpu": widgets.ToggleButtons(options=[(f"{gb} GB {name}", name) for name, gb in GPU_MEMORY_GB.items()],
                                         value="H100", description="GPU",
                                         style={**style, "button_width": f"{BUTTON_PX['gpu']}px"},
                                         layout=fixed(CONTROL_PX)),
            "kv_lora_rank": widgets.IntSlider(value=512, min=16, max=2048, step=16, description="kv_lora_rank d_c",
                                              style=style, layout=fixed(CONTROL_PX)),
            "qk_rope_head_dim": widgets.IntSlider(value=64, min=8, max=256, step=8, description="rope dim d_h^R",
                                                  style=style, layout=fixed(CONTROL_PX)),
        }
        for name in ("precision", "gpu"):  # label beside the buttons, like the sliders' (see the docstring)
            for cls in INLINE_CLASSES:
                self.controls[name].add_class(cls)
        self.state: dict = {}
        self.numbers = widgets.HTML(layout=widgets.Layout(width=f"{NUMBERS_PX}px", flex="0 0 auto",
                                                          margin=f"0 0 0 {GAP_PX}px"))
        self.plot = widgets.Output(layout=widgets.Layout(min_height="420px"))
        self.headline = widgets.HTML()
        self.headline_plot = widgets.Output()
        self.headline_numbers: dict = {}  # filled by show_headline, also in state["headline"]
        self.figure = Figure(figsize=FIGURE_IN)
        FigureCanvasAgg(self.figure)  # a renderer to measure the legend with (and to save the PNG)
        self.ax = None
        self._quiet = False  # True while on_preset or set() move several controls: one update at the end

        self.controls_box = widgets.VBox(list(self.controls.values()), layout=fixed(CONTROL_PX + 2 * WIDGET_MARGIN_PX))
        # controls and numbers side by side, the numbers below when the output area is too narrow for both
        self.top = widgets.HBox([self.controls_box, self.numbers], layout=widgets.Layout(flex_flow="row wrap"))
        main = widgets.VBox([self.top, self.plot])
        self.widget = widgets.Tab(children=[main, widgets.VBox([self.headline, self.headline_plot])],
                                  titles=("KV cache", "V2 headline"))
        self.controls["preset"].observe(self.on_preset, names="value")
        for name, control in self.controls.items():
            if name != "preset":
                control.observe(self.update, names="value")
        self.show_headline()
        self.set(preset=preset, **values)  # the preset's MLA sliders, then the values given: one update

    # ------------------------------------------------------------ callbacks
    def on_preset(self, change=None) -> None:
        """A new model: move the MLA sliders to its values (enabled only for MLA), then update."""
        cfg = dashboard_config(self.controls["preset"].value)
        is_mla = cfg.attn_type == "mla"
        quiet, self._quiet = self._quiet, True
        try:
            for name in MLA_CONTROLS:
                slider = self.controls[name]
                slider.disabled = not is_mla
                if is_mla:
                    slider.value = getattr(cfg, name)
        finally:
            self._quiet = quiet
        self.update()

    def update(self, change=None) -> None:
        """Recompute ``state`` from the widgets, then refresh the numbers and the plot (if anything changed)."""
        if self._quiet:
            return
        try:
            state = {**self.compute(), "headline": self.headline_numbers}
        except ValueError as err:  # a combination the config refuses: say why, keep the last plot
            self.state = {"error": str(err), "headline": self.headline_numbers}
            self.numbers.value = f"<p style='color:#b00'>Not a valid model: {err}</p>"
            return
        if state == self.state:  # e.g. an MLA slider moved while a model without MLA is shown
            return
        self.state = state
        png = self.render()  # the slow part, before any widget changes
        self.plot.outputs = (png,)  # then both views, back to back: the picture first (it takes longer to show)
        self.numbers.value = self.numbers_html()

    def set(self, **values) -> None:
        """Set several controls at once (``dash.set(preset="nano", context=4096)``) with a single update.

        A new preset is applied first, so MLA slider values given in the same
        call override the preset's.
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"no control(s) {', '.join(unknown)}; controls: {', '.join(self.controls)}")
        quiet, self._quiet = self._quiet, True
        try:
            if "preset" in values:
                self.controls["preset"].value = values.pop("preset")
                self.on_preset()
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._quiet = quiet
        self.update()

    def settings(self) -> dict:
        """The control values, as :meth:`set` and :func:`cache_dashboard` take them (the MLA sliders only
        for an MLA model: for another they are disabled and unused)."""
        mla = dashboard_config(self.controls["preset"].value).attn_type == "mla"
        return {name: c.value for name, c in self.controls.items() if mla or name not in MLA_CONTROLS}

    def copy(self, **values) -> CacheDashboard:
        """A new dashboard with this one's settings, then ``values`` (``dash.copy(preset="nano")``); this one
        is left as it is. A new ``preset`` brings its own MLA sliders unless ``values`` sets them too."""
        settings = self.settings()
        if "preset" in values:
            settings = {k: v for k, v in settings.items() if k not in MLA_CONTROLS}
        settings.update(values)
        return CacheDashboard(**settings)

    # ------------------------------------------------------------ computation
    def config(self) -> ModelConfig:
        """The chosen model, with the MLA sliders applied when it is an MLA model."""
        cfg = dashboard_config(self.controls["preset"].value)
        if cfg.attn_type == "mla":
            cfg = cfg.replace(kv_lora_rank=self.controls["kv_lora_rank"].value,
                              qk_rope_head_dim=self.controls["qk_rope_head_dim"].value)
        return cfg

    def compute(self) -> dict:
        """The numbers for the current widget values (no widget is changed)."""
        cfg = self.config()
        c = self.controls
        precision, context, batch = c["precision"].value, c["context"].value, c["batch_size"].value
        dtype = PRECISIONS[precision]
        gpu_gb = GPU_MEMORY_GB[c["gpu"].value]
        total, active = parameter_count(cfg)
        fit = longest_context(cfg, dtype, batch, gpu_gb)
        size = cache_bytes(cfg, context, batch, dtype)
        return {
            "model": c["preset"].value, "config": cfg, "attention": cfg.attn_type, "context": context,
            "batch_size": batch, "precision": precision, "dtype": dtype, "gpu": c["gpu"].value, "gpu_gb": gpu_gb,
            "elements_per_token": elements_per_token(cfg),  # per layer
            "bytes_per_token": bytes_per_token(cfg, dtype),  # one sequence, all layers
            "cache_bytes": size, "cache_gb": size / GB,
            "ratio_to_mha": ratio_to_mha(cfg),
            "parameters_total": total, "parameters_active": active, "weights_gb": fit["weights_bytes"] / GB,
            "gpus": fit["gpus"], "free_gb": fit["free_bytes"] / GB,
            "max_context": fit["max_context"], "max_context_cache_only": fit["max_context_cache_only"],
            "model_max_context": cfg.max_position_embeddings,
            "fits": fit["gpus"] > 0 and context <= fit["max_context"],
            "error": None,
        }

    # ------------------------------------------------------------ views
    def numbers_html(self) -> str:
        s = self.state
        gpu = f"{s['gpu_gb']} GB {s['gpu']}"
        if s["gpus"] == 1:
            where = f"beside the weights on one {gpu}"
        elif s["gpus"] == NODE_GPUS:
            where = (f"weights alone exceed one {gpu}: on a node of {NODE_GPUS} x {gpu}, "
                     f"{s['free_gb']:,.0f} GB left for the cache")
        else:
            where = f"weights alone exceed a node of {NODE_GPUS} x {gpu}: no context fits"
        fits = "fits" if s["fits"] else "does not fit"
        if s["context"] > s["model_max_context"]:
            fits += f"; past the trained {context_label(s['model_max_context'])}"
        ratio = "same as MHA" if s["ratio_to_mha"] == 1 else f"{s['ratio_to_mha']:.1f}x smaller than MHA"
        rows = [
            _row(f"KV cache, {context_label(s['context'])} tokens x batch {s['batch_size']}",
                 f"{_gb(s['cache_gb'])} GB ({fits})"),
            _row("against the same model with MHA", ratio),
            _row(f"bytes per token, all layers ({dtype_label(s['dtype'])})", f"{s['bytes_per_token']:,}"),
            _row("elements per token per layer", f"{s['elements_per_token']:,}"),
            _row("parameters, total / active (MTP left out)",
                 f"{s['parameters_total'] / 1e9:,.1f}B / {s['parameters_active'] / 1e9:,.1f}B"),
            _row(f"weights in {dtype_label(s['dtype'])}", f"{s['weights_gb']:,.1f} GB"),
            _row(f"longest context that fits, batch {s['batch_size']}", f"{s['max_context']:,} tokens each"),
            f"<tr><td colspan='2' style='font-size:0.9em'>{where}</td></tr>",
            _row(f"one whole {gpu} for the cache, no weights", f"{s['max_context_cache_only']:,} tokens each"),
            _row("trained context of the model", f"{s['model_max_context']:,} tokens"),
        ]
        return f"<table style='font-size:0.95em; width:100%; line-height:1.5'>{''.join(rows)}</table>"

    def draw(self) -> None:
        """Redraw the plot of ``state`` and show it (:meth:`update` does this together with the numbers)."""
        self.plot.outputs = (self.render(),)

    def render(self) -> dict:
        """Draw cache against context for the chosen model (and MHA for scale), marker at the chosen context,
        into ``figure``; the PNG as an output for ``plot`` (no widget is changed)."""
        s = self.state
        cfg = s["config"]
        kinds = ("mha",) if cfg.attn_type == "mha" else ("mha", cfg.attn_type)
        self.figure.clear()
        ax = self.figure.subplots()
        title = (f"{s['model']}: {_gb(s['cache_gb'])} GB of cache at {context_label(s['context'])} tokens, "
                 + ("same as MHA" if s["ratio_to_mha"] == 1 else f"{s['ratio_to_mha']:.1f}x less than MHA"))
        plot_cache_vs_context(cfg, kinds=kinds, dtype=s["dtype"], batch_size=s["batch_size"],
                              max_context=CONTEXTS[-1], gpu_memory_gb=(s["gpu_gb"],), title=title, ax=ax)
        ax.plot([s["context"]], [s["cache_gb"]], "o", color="black", ms=9, label="chosen context", zorder=5)
        if s["gpus"] > 0 and s["free_gb"] > 0:
            ax.axhline(s["free_gb"], color="tab:gray", ls=":", lw=1.5,
                       label=f"left for the cache on {s['gpus']} GPU{'s' if s['gpus'] > 1 else ''}")
        self.ax = ax
        self.layout_legend()
        return _png_output(self.figure)

    def layout_legend(self, pad_px: float = 6) -> None:
        """Put the legend below the axes in as many columns as fit the figure's width (one row if it can),
        then set the bottom margin to hold the axis' tick labels, its label and the legend, as measured."""
        fig, ax = self.figure, self.ax
        width, height = fig.bbox.width, fig.bbox.height
        left, right, top = 0.09, 0.97, 0.92
        fig.subplots_adjust(left=left, right=right, top=top, bottom=0.3)  # a first guess, to measure with
        renderer = fig.canvas.get_renderer()
        handles, labels = ax.get_legend_handles_labels()
        for ncol in range(len(labels), 0, -1):
            legend = ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0),  # figure centre
                               bbox_transform=fig.transFigure, ncol=ncol, fontsize=LEGEND_FONT, frameon=False,
                               borderaxespad=0.2)
            if legend.get_window_extent(renderer).width <= width - 2 * pad_px:
                break
        legend_px = legend.get_window_extent(renderer).height
        axes_y0 = ax.get_window_extent(renderer).y0
        below_axes_px = axes_y0 - ax.xaxis.get_tightbbox(renderer).y0  # tick labels and the x label
        fig.subplots_adjust(bottom=(legend_px + below_axes_px + 2 * pad_px) / height)

    def show_headline(self) -> None:
        """Fill the "V2 headline" tab: the 93.3% split into architecture and quantisation."""
        d = decompose_v2_headline()
        dense = d.dense67b_elements_per_token * d.dense67b_bits / 8
        v2_same = d.v2_elements_per_token * d.dense67b_bits / 8
        v2_low = d.v2_elements_per_token * d.v2_bits / 8
        self.headline_numbers = {
            "dense67b_bytes_per_token": dense, "v2_bf16_bytes_per_token": v2_same, "v2_bytes_per_token": v2_low,
            "architecture_saving": d.architecture_saving, "quantisation_saving": d.quantisation_saving,
            "total_saving": d.total_saving,
        }
        rows = [
            _row(f"DeepSeek 67B (GQA), {dtype_label(d.dense67b_bits)}: bytes per token",
                 f"{d.dense67b_elements_per_token:,} x {d.dense67b_bits} bits / 8 = {dense:,.0f}"),
            _row(f"DeepSeek-V2 (MLA), {dtype_label(d.dense67b_bits)}",
                 f"{d.v2_elements_per_token:,} x {d.dense67b_bits} bits / 8 = {v2_same:,.0f}"),
            _row(f"DeepSeek-V2 (MLA), {dtype_label(d.v2_bits)} cache",
                 f"{d.v2_elements_per_token:,} x {d.v2_bits} bits / 8 = {v2_low:,.0f}"),
            _row("saved by the architecture (MLA), same precision", f"{100 * d.architecture_saving:.1f}%"),
            _row(f"saved by the {dtype_label(d.v2_bits)} cache, same architecture",
                 f"{100 * d.quantisation_saving:.1f}%"),
            _row("saved in total: the paper's headline", f"{100 * d.total_saving:.1f}%"),
        ]
        self.headline.value = ("<p>DeepSeek-V2 reports its KV cache <i>reduced by 93.3%</i> against DeepSeek 67B. "
                               "Two changes multiply:</p>" + f"<table>{''.join(rows)}</table>")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.2))
        plot_v2_headline(ax=fig.subplots())
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.92)
        self.headline_plot.outputs = (_png_output(fig),)

    def summary(self) -> str:
        """One line with the settings and the main numbers: the text of the dashboard where widgets cannot show."""
        s = self.state
        if s.get("error"):
            return f"KV-cache dashboard: not a valid model: {s['error']}"
        ratio = "same as MHA" if s["ratio_to_mha"] == 1 else f"{s['ratio_to_mha']:.1f}x smaller than MHA"
        fits = "fits" if s["fits"] else "does not fit"
        return (f"KV-cache dashboard: {s['model']}, {context_label(s['context'])} tokens x batch {s['batch_size']}, "
                f"{s['precision']}, {s['gpu_gb']} GB {s['gpu']}: KV cache {_gb(s['cache_gb'])} GB ({fits}), "
                f"{ratio}, {s['bytes_per_token']:,} bytes per token")

    def _repr_mimebundle_(self, **kwargs):
        """The widgets, with a PNG of the plot and :meth:`summary` for where widgets cannot be drawn.

        Frontends that draw widgets (JupyterLab, Notebook 7, an HTML export with the saved widget state)
        prefer the widget view; a static view (GitHub, a Markdown export) shows the PNG or the text.
        """
        data = dict(self.widget._repr_mimebundle_(**kwargs))
        data["text/plain"] = self.summary()
        if self.plot.outputs:
            data["image/png"] = self.plot.outputs[0]["data"]["image/png"]
        return data


def cache_dashboard(preset: str = "deepseek-v3", **values) -> CacheDashboard:
    """Build the KV-cache dashboard for ``preset`` with the controls in ``values`` set
    (``cache_dashboard("deepseek-v3", precision="fp8", batch_size=32)``); display it by leaving it last
    in a cell. See the module docstring."""
    return CacheDashboard(preset, **values)


__all__ = ["cache_dashboard", "CacheDashboard", "parameter_count", "longest_context", "dashboard_config",
           "MODEL_CHOICES", "PRECISIONS", "CONTEXTS", "NODE_GPUS"]
