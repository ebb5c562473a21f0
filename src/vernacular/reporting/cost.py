"""Self-hosted versus vendor transcription cost, from measured numbers only.

Model of the costs (all prices in USD):

- training run = training_device_hours x device_hour_usd
- self-hosted per audio hour = inference_rtf x device_hour_usd (rtf: processing seconds per
  audio second, so device hours per audio hour); the base model uses its own measured rtf
- vendor per audio hour = vendor_usd_per_audio_minute x 60
- break-even volume = training run / (vendor - self-hosted per audio hour); processed within one
  month, that month's savings pay for the training run
- payback time = break-even volume / monthly volume x 30 days

Assumptions: the device is rented by the hour and kept fully busy (no idle time, no
batching or queueing overhead beyond what the measured RTF already includes, no spare
capacity for peaks); inference runs on the same kind of device, at the same price, as
training; no engineering, storage, networking, monitoring or re-training cost; the vendor
charges a flat rate per audio minute; a month is 30 days.

The page (Markdown and a self-contained HTML file) is built from one table model, so both
say the same thing. See docs/cost.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from vernacular.common.config import build_settings
from vernacular.common.htmlpage import figure_png, page_head, png_img, text_html
from vernacular.evaluation.report import control_sentence, unseen_voice_sentence

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 30
DEVICE_HOURS_PER_MONTH = DAYS_PER_MONTH * 24
CPU_LABEL = "CPU figures: measured on a CPU, not representative of GPU serving."

_NUMERIC_FIELDS = (
    "training_device_hours",
    "inference_rtf",
    "device_hour_usd",
    "vendor_usd_per_audio_minute",
    "monthly_audio_hours",
)


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")


@dataclass(frozen=True)
class CostSettings:
    """The `cost` block of a vertical in conf/base/parameters.yml."""

    @classmethod
    def from_dict(cls, values: dict | None) -> "CostSettings":
        return build_settings(cls, values, "cost")

    monthly_audio_hours: float = 10000.0
    vendor_tier: str = "custom"
    show_other_vendor_tiers: bool = True


@dataclass(frozen=True)
class CostInputs:
    """Measured inputs of a cost projection.

    `inference_rtf` is the merged adapter's; `base_inference_rtf` (optional) the base model's on
    the same device. `other_vendor_tiers` maps further vendor tiers to USD per audio minute, shown
    beside the configured `vendor_tier`. `sources` maps a field name (or
    `other_vendor_tiers.<tier>`) to where its value came from; missing entries read "not stated".
    """

    training_device_hours: float
    device: str
    inference_rtf: float
    device_hour_usd: float
    vendor_usd_per_audio_minute: float
    monthly_audio_hours: float = 10000.0
    base_inference_rtf: float | None = None
    vendor_tier: str = "vendor"
    other_vendor_tiers: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _NUMERIC_FIELDS:
            _check_number(name, getattr(self, name))
        if self.inference_rtf <= 0:
            raise ValueError(f"inference_rtf must be > 0 (processing seconds per audio second), got {self.inference_rtf!r}")
        if self.base_inference_rtf is not None:
            _check_number("base_inference_rtf", self.base_inference_rtf)
            if self.base_inference_rtf <= 0:
                raise ValueError(f"base_inference_rtf must be > 0, got {self.base_inference_rtf!r}")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        if not isinstance(self.vendor_tier, str) or not self.vendor_tier.strip():
            raise ValueError(f"vendor_tier must be a non-empty string, got {self.vendor_tier!r}")
        for tier, usd in self.other_vendor_tiers.items():
            _check_number(f"other_vendor_tiers.{tier}", usd)
        if self.vendor_tier in self.other_vendor_tiers:
            raise ValueError(f"other_vendor_tiers repeats the configured vendor_tier {self.vendor_tier!r}")
        known = {f.name for f in fields(self)} - {"sources"}
        known |= {f"other_vendor_tiers.{tier}" for tier in self.other_vendor_tiers}
        unknown = set(self.sources) - known
        if unknown:
            raise ValueError(f"sources names unknown field(s) {sorted(unknown)}")

    @property
    def is_cpu(self) -> bool:
        return self.device.strip().lower() == "cpu"


@dataclass(frozen=True)
class WerFigure:
    """A word error rate (fraction) with its optional 95% interval."""

    wer: float
    ci: tuple[float, float] | None = None

    def text(self) -> str:
        # the bootstrap gives no interval on a tiny test set: (None, None)
        ci = f" [{100 * self.ci[0]:.1f}, {100 * self.ci[1]:.1f}]" if self.ci and None not in self.ci else ""
        return f"{100 * self.wer:.1f}%{ci}"


@dataclass(frozen=True)
class AdapterSize:
    """Adapter size in bytes; `measured` says whether it is the files on disk or params x bytes."""

    bytes: int
    trainable_params: int
    total_params: int
    measured: bool
    detail: str

    @property
    def fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else float("nan")

    def text(self) -> str:
        how = "measured on disk" if self.measured else "estimated"
        return (f"{self.bytes / 1e6:.2f} MB ({how}); {100 * self.fraction:.2f}% of parameters "
                f"({self.trainable_params:,} of {self.total_params:,})")


@dataclass(frozen=True)
class ReportFacts:
    """What the page shows besides costs: accuracy, adapter size, the full device name.

    `sources` holds where the WER figures came from (key `wer`).
    """

    base_wer: WerFigure | None = None
    adapter_wer: WerFigure | None = None
    test_set: str = "the test split"
    device_name: str = ""
    adapter_size: AdapterSize | None = None
    sources: dict[str, str] = field(default_factory=dict)
    control: str | None = None  # the forgetting check in one sentence (real or synthetic general speech)
    unseen_voices: str | None = None  # the test sentences read by an unseen synthesiser, in one sentence


def adapter_size(path: str | Path | None, trainable_params: int, total_params: int,
                 bytes_per_param: int = 4) -> AdapterSize:
    """Size of a saved PEFT adapter: its weight files and adapter_config.json if `path` holds
    them, else trainable_params x bytes_per_param (PEFT saves the trained fp32 weights: 4)."""
    folder = Path(path) if path else None
    files = sorted(folder.glob("adapter_model.*")) if folder and folder.is_dir() else []
    if files:
        config = folder / "adapter_config.json"
        files += [config] if config.is_file() else []
        size = sum(f.stat().st_size for f in files)
        detail = f"measured: {' + '.join(f.name for f in files)} in {folder}"
        return AdapterSize(size, int(trainable_params), int(total_params), True, detail)
    why = f"no adapter_model.* in {folder}" if folder else "no adapter path in the inputs"
    detail = f"estimated: {int(trainable_params):,} trainable parameters x {bytes_per_param} bytes ({why})"
    return AdapterSize(int(trainable_params) * bytes_per_param, int(trainable_params), int(total_params), False, detail)


def _against_vendor(training_cost: float, self_per_hour: float, vendor_per_hour: float, volume: float) -> dict:
    """Savings, break-even volume and payback of one self-hosted option against one vendor price."""
    self_month = volume * self_per_hour
    vendor_month = volume * vendor_per_hour
    savings = vendor_month - self_month
    margin = vendor_per_hour - self_per_hour
    if margin <= 0:
        break_even = payback = None
        note = (f"Self-hosting costs ${self_per_hour:,.4f} per audio hour against the vendor's "
                f"${vendor_per_hour:,.4f}, so it never pays back the training run.")
    else:
        break_even = training_cost / margin
        if volume > 0:
            payback = break_even / volume * DAYS_PER_MONTH
            note = "Savings pay back the training run after break_even_audio_hours of audio."
        else:
            payback = None
            note = "No monthly volume, so no payback time; break_even_audio_hours still applies."
    return {
        "vendor_usd_per_audio_hour": vendor_per_hour,
        "vendor_usd_per_month": vendor_month,
        "monthly_savings_usd": savings,
        "savings_pct": savings / vendor_month * 100.0 if vendor_month else None,
        "break_even_audio_hours": break_even,
        "payback_days": payback,
        "break_even_note": note,
    }


def _devices(device_hours: float) -> int:
    return math.ceil(device_hours / DEVICE_HOURS_PER_MONTH) if device_hours else 0


def project_costs(inputs: CostInputs) -> dict:
    """Monthly costs, savings, break-even audio hours and payback days (see module docstring).

    Top-level keys are the self-hosted adapter against the configured vendor tier.
    break_even_audio_hours is the volume whose savings pay for the training run (processed in
    one month: the break-even monthly volume). It and payback_days are None when self-hosting
    is not cheaper per audio hour, and payback_days is None when the monthly volume is 0;
    break_even_note says why in words. devices_needed is how many fully busy devices the monthly
    volume takes (720 h a month each). `base` (None without base_inference_rtf) is the base model
    self-hosted, with no training run; `other_vendor_tiers` repeats the comparison per tier.
    """
    vol = inputs.monthly_audio_hours
    training_cost = inputs.training_device_hours * inputs.device_hour_usd
    self_per_hour = inputs.inference_rtf * inputs.device_hour_usd
    vendor_per_hour = inputs.vendor_usd_per_audio_minute * 60.0
    device_hours = vol * inputs.inference_rtf
    main = _against_vendor(training_cost, self_per_hour, vendor_per_hour, vol)

    base = None
    if inputs.base_inference_rtf is not None:
        base_per_hour = inputs.base_inference_rtf * inputs.device_hour_usd
        base_vs = _against_vendor(0.0, base_per_hour, vendor_per_hour, vol)
        base = {
            "usd_per_audio_hour": base_per_hour,
            "usd_per_month": vol * base_per_hour,
            "device_hours_per_month": vol * inputs.base_inference_rtf,
            "devices_needed": _devices(vol * inputs.base_inference_rtf),
            "monthly_savings_usd": base_vs["monthly_savings_usd"],
            "savings_pct": base_vs["savings_pct"],
            "cheaper_than_vendor": base_per_hour < vendor_per_hour,
        }

    others = {}
    for tier, usd_min in inputs.other_vendor_tiers.items():
        others[tier] = {"usd_per_audio_minute": usd_min,
                        **_against_vendor(training_cost, self_per_hour, usd_min * 60.0, vol)}

    return {
        "device": inputs.device,
        "vendor_tier": inputs.vendor_tier,
        "training_cost_usd": training_cost,
        "self_hosted_device_hours_per_month": device_hours,
        "devices_needed": _devices(device_hours),
        "self_hosted_usd_per_month": vol * self_per_hour,
        "self_hosted_usd_per_audio_hour": self_per_hour,
        **main,
        "break_even_monthly_audio_hours": main["break_even_audio_hours"],
        "base": base,
        "other_vendor_tiers": others,
    }


def _usd(x: float) -> str:
    # Per-audio-hour costs on a GPU are often cents: keep 4 decimals below a dollar.
    sign = "-" if x < 0 else ""
    x = abs(x)
    return f"{sign}${x:,.4f}" if 0 < x < 1 else f"{sign}${x:,.2f}"


def _duration(days: float) -> str:
    hours = days * 24
    if days >= 1:
        return f"{days:,.1f} days"
    if hours >= 1:
        return f"{hours:.1f} hours"
    return f"{hours * 60:.0f} minutes" if hours * 60 >= 1 else "under a minute"


def _num(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def _audio_hours(hours: float) -> str:
    """Audio hours, with minutes or seconds of audio when under an hour (tiny break-evens)."""
    if hours >= 1 or hours == 0:
        return f"{_num(hours)} audio hours"
    minutes = hours * 60
    tail = f"{minutes:.2g} min of audio" if minutes >= 1 else f"{minutes * 60:.2g} s of audio"
    return f"{_num(hours)} audio hours ({tail})"


def _savings(x: float, pct: float | None) -> str:
    return _usd(x) + (f" ({pct:.1f}%)" if pct is not None else "")


def device_label(inputs: CostInputs) -> str:
    """The line that says whether the figures are CPU or GPU ones."""
    return CPU_LABEL if inputs.is_cpu else f"GPU figures: measured on {inputs.device}."


def _page(inputs: CostInputs, p: dict, facts: ReportFacts | None, title: str, notes) -> dict:
    """Everything the page says, as plain text; the Markdown and HTML renderers only format it."""
    facts = facts or ReportFacts()
    vol = inputs.monthly_audio_hours
    tier = inputs.vendor_tier
    others = list(p["other_vendor_tiers"])
    base = p["base"]
    dash = "-"

    headline = []
    if facts.base_wer and facts.adapter_wer:
        headline.append(f"Word error rate on {facts.test_set}: base model {facts.base_wer.text()}, with the adapter "
                        f"{facts.adapter_wer.text()}" + (" (95% bootstrap intervals)." if facts.adapter_wer.ci else "."))
    if facts.control:
        headline.append(facts.control)
    if facts.unseen_voices:
        headline.append(facts.unseen_voices)
    if p["break_even_audio_hours"] is None:
        headline.append(
            f"At {_num(vol)} audio hours a month, self-hosting with the adapter on {facts.device_name or inputs.device} would cost "
            f"{_usd(p['self_hosted_usd_per_month'])} against the vendor's {_usd(p['vendor_usd_per_month'])} "
            f"({tier} tier): it is not cheaper and never pays back the {_usd(p['training_cost_usd'])} training run.")
    else:
        payback = (f"pays back the {_usd(p['training_cost_usd'])} training run in {_duration(p['payback_days'])}"
                   if p["payback_days"] is not None else
                   f"would pay back the {_usd(p['training_cost_usd'])} training run after "
                   f"{_num(p['break_even_audio_hours'])} audio hours")
        headline.append(
            f"At {_num(vol)} audio hours a month, self-hosting with the adapter on {facts.device_name or inputs.device} costs "
            f"{_usd(p['self_hosted_usd_per_month'])} against the vendor's {_usd(p['vendor_usd_per_month'])} "
            f"({tier} tier), saving {_usd(p['monthly_savings_usd'])} a month, and {payback}.")

    if "assumption" in inputs.sources.get("vendor_usd_per_audio_minute", "").lower():
        headline.append(f"The vendor price ({_usd(inputs.vendor_usd_per_audio_minute)} per audio minute, {tier} tier) "
                        f"is an assumption, not a quote: put your vendor's price in {PRICES_FILE}.")

    columns = ["", "self-hosted base model", "self-hosted with adapter (merged)", f"vendor ({tier} tier)"]
    columns += [f"vendor ({t} tier)" for t in others]
    vendor_dash = [dash] * (1 + len(others))

    def base_cell(text_fn):
        return text_fn(base) if base else "not measured"

    if base is None:
        base_break_even = "not measured"
    elif base["cheaper_than_vendor"]:
        base_break_even = "none needed (no training run)"
    else:
        base_break_even = "never (dearer per audio hour)"
    if p["break_even_audio_hours"] is None:
        break_even, payback = "never (not cheaper per audio hour)", "never"
    else:
        break_even = _audio_hours(p["break_even_audio_hours"])
        payback = _duration(p["payback_days"]) if p["payback_days"] is not None else "no volume"
    device_cell = f"{facts.device_name or inputs.device}; {'CPU figures' if inputs.is_cpu else 'GPU figures'}"
    wer_na = ["not measured"] * (1 + len(others))
    rows = [
        ["word error rate, test split" + (" (95% CI)" if facts.adapter_wer and facts.adapter_wer.ci else ""),
         facts.base_wer.text() if facts.base_wer else "not measured",
         facts.adapter_wer.text() if facts.adapter_wer else "not measured", *wer_na],
        [f"cost a month at {_num(vol)} audio hours",
         base_cell(lambda b: _usd(b["usd_per_month"])), _usd(p["self_hosted_usd_per_month"]),
         _usd(p["vendor_usd_per_month"]), *(_usd(p["other_vendor_tiers"][t]["vendor_usd_per_month"]) for t in others)],
        ["cost per audio hour",
         base_cell(lambda b: _usd(b["usd_per_audio_hour"])), _usd(p["self_hosted_usd_per_audio_hour"]),
         _usd(p["vendor_usd_per_audio_hour"]),
         *(_usd(p["other_vendor_tiers"][t]["vendor_usd_per_audio_hour"]) for t in others)],
        ["device-hours a month (devices kept busy)",
         base_cell(lambda b: f"{_num(b['device_hours_per_month'])} ({b['devices_needed']})"),
         f"{_num(p['self_hosted_device_hours_per_month'])} ({p['devices_needed']})", *vendor_dash],
        ["one-off training cost", "none", _usd(p["training_cost_usd"]), *vendor_dash],
        [f"savings a month vs vendor ({tier} tier)",
         base_cell(lambda b: _savings(b["monthly_savings_usd"], b["savings_pct"])),
         _savings(p["monthly_savings_usd"], p["savings_pct"]), *vendor_dash],
        ["break-even monthly volume", base_break_even, break_even, *vendor_dash],
        [f"payback of the training run at {_num(vol)} audio hours a month", "no training run", payback, *vendor_dash],
        ["adapter size", dash, facts.adapter_size.text() if facts.adapter_size else "not measured", *vendor_dash],
        ["device", device_cell, device_cell, *(["vendor's servers"] * (1 + len(others)))],
    ]

    after_table = []
    if p["break_even_audio_hours"] is not None and p["training_cost_usd"] > 0:
        saved = p["vendor_usd_per_audio_hour"] - p["self_hosted_usd_per_audio_hour"]
        after_table.append(
            f"Break-even, in words: each audio hour self-hosted instead of sent to the vendor saves {_usd(saved)}, so "
            f"the one-off training run ({_usd(p['training_cost_usd'])}) is repaid by the first "
            f"{_audio_hours(p['break_even_audio_hours'])} of audio"
            + (f"; at {_num(vol)} audio hours a month that takes {_duration(p['payback_days'])}."
               if p["payback_days"] is not None else "."))
    for t in others:
        o = p["other_vendor_tiers"][t]
        if o["break_even_audio_hours"] is None:
            after_table.append(f"Against the {t} tier ({_usd(o['usd_per_audio_minute'])} per audio minute) self-hosting "
                               f"with the adapter is not cheaper and never pays back the training run.")
        else:
            pay = _duration(o["payback_days"]) if o["payback_days"] is not None else "no payback (no volume)"
            after_table.append(
                f"Against the {t} tier ({_usd(o['usd_per_audio_minute'])} per audio minute) self-hosting with the "
                f"adapter saves {_savings(o['monthly_savings_usd'], o['savings_pct'])} a month; break-even "
                f"{_audio_hours(o['break_even_audio_hours'])}; payback {pay}.")

    def src(name: str) -> str:
        return inputs.sources.get(name, "not stated")

    sources = [
        ("device", facts.device_name or inputs.device, src("device")),
        ("training run, device-hours", _num(inputs.training_device_hours), src("training_device_hours")),
        ("real-time factor, adapter merged (processing s per audio s)", _num(inputs.inference_rtf),
         src("inference_rtf")),
    ]
    if inputs.base_inference_rtf is not None:
        sources.append(("real-time factor, base model", _num(inputs.base_inference_rtf), src("base_inference_rtf")))
    sources += [
        ("device price per hour", _usd(inputs.device_hour_usd), src("device_hour_usd")),
        (f"vendor price per audio minute, {tier} tier", _usd(inputs.vendor_usd_per_audio_minute),
         src("vendor_usd_per_audio_minute")),
    ]
    sources += [(f"vendor price per audio minute, {t} tier", _usd(usd), src(f"other_vendor_tiers.{t}"))
                for t, usd in inputs.other_vendor_tiers.items()]
    sources.append(("monthly audio volume, hours", _num(vol), src("monthly_audio_hours")))
    if facts.base_wer and facts.adapter_wer:
        sources.append(("word error rate, base / adapter", f"{facts.base_wer.text()} / {facts.adapter_wer.text()}",
                        facts.sources.get("wer", "not stated")))
    if facts.adapter_size:
        sources.append(("adapter size", f"{facts.adapter_size.bytes:,} bytes", facts.adapter_size.detail))

    formulas = [
        "self-hosted cost per audio hour = real-time factor x device price per hour (the real-time factor is "
        "device-hours per audio hour); the base model uses its own measured real-time factor",
        "vendor cost per audio hour = price per audio minute x 60; cost a month = audio hours a month x cost per audio hour",
        "training cost = training device-hours x device price per hour",
        "savings a month = vendor cost a month - self-hosted cost a month",
        "break-even volume = training cost / (vendor - self-hosted cost per audio hour): at that monthly volume one "
        "month's savings pay for the training run (in the chart, where the dashed line meets the vendor line)",
        f"payback time = break-even volume / audio hours a month x {DAYS_PER_MONTH} days",
        f"devices kept busy = device-hours a month / {DEVICE_HOURS_PER_MONTH}, rounded up",
    ]
    assumptions = [
        "The device is rented by the hour and kept fully busy: no idle time, no spare capacity for peaks.",
        "The measured real-time factor holds at production volume; inference uses the same device and price as training.",
        "No engineering, storage, networking, monitoring or re-training cost is included.",
        "The vendor charges a flat rate per audio minute; its accuracy on this data was not measured; a month is 30 days.",
    ]
    return {"title": title, "headline": headline, "device_label": device_label(inputs), "is_cpu": inputs.is_cpu,
            "columns": columns, "rows": rows, "after_table": after_table, "sources": sources,
            "formulas": formulas, "assumptions": assumptions, "notes": list(notes)}


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_cost_markdown(inputs: CostInputs, projection: dict, *, title: str, facts: ReportFacts | None = None,
                         notes: list[str] = (), chart: str | None = None) -> str:
    """A manager-readable Markdown page; `chart` is an image path or URL to show under the table."""
    page = _page(inputs, projection, facts, title, notes)
    lines = [f"# {title}", "", " ".join(page["headline"]), "", f"> **{page['device_label']}**", "",
             "## Side by side", "",
             "| " + " | ".join(_md_cell(c) for c in page["columns"]) + " |",
             "|" + "---|" * len(page["columns"])]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in page["rows"]]
    lines.append("")
    for sentence in page["after_table"]:
        lines += [sentence, ""]
    if chart:
        lines += [f"![monthly cost by audio volume]({chart})", ""]
    else:
        lines += ["The chart is `cost_plot.png` of the same run (same version folder name); `cost_report.html` "
                  "embeds it with this page.", ""]
    lines += ["## Where every number comes from", "", "| figure | value | source |", "|---|---|---|"]
    lines += [f"| {_md_cell(a)} | {_md_cell(b)} | {_md_cell(c)} |" for a, b, c in page["sources"]]
    lines += ["", "## How the figures are computed", ""] + [f"- {f}" for f in page["formulas"]]
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in page["assumptions"]]
    if page["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in page["notes"]]
    return "\n".join(lines) + "\n"


def render_cost_html(inputs: CostInputs, projection: dict, *, title: str, png: bytes,
                     facts: ReportFacts | None = None, notes: list[str] = ()) -> str:
    """The same page as `render_cost_markdown` as one self-contained HTML file, `png` embedded."""
    image = png_img(png, "monthly cost at the configured volume for each option, and against audio hours a month "
                         "with the break-even marked")
    page = _page(inputs, projection, facts, title, notes)
    e = text_html
    out = [*page_head(title), f"<h1>{e(title)}</h1>"]
    out += [f'<p class="headline">{e(s)}</p>' for s in page["headline"]]
    out.append(f'<p class="label{" cpu" if page["is_cpu"] else ""}">{e(page["device_label"])}</p>')
    out += ["<h2>Side by side</h2>", "<table>", "<thead><tr>"]
    out += [f'<th scope="col">{e(c)}</th>' for c in page["columns"]]
    out += ["</tr></thead>", "<tbody>"]
    for label, *cells in page["rows"]:
        out.append(f'<tr><th scope="row">{e(label)}</th>' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    out += [f"<p>{e(s)}</p>" for s in page["after_table"]]
    out += ["<h2>Monthly cost: at the configured volume, and by volume</h2>", image]
    out += ["<h2>Where every number comes from</h2>", "<table>",
            '<thead><tr><th scope="col">figure</th><th scope="col">value</th><th scope="col">source</th></tr></thead>',
            "<tbody>"]
    out += [f'<tr><th scope="row">{e(a)}</th><td class="num">{e(b)}</td><td>{e(c)}</td></tr>'
            for a, b, c in page["sources"]]
    out += ["</tbody>", "</table>"]
    out += ["<h2>How the figures are computed</h2>", "<ul>"] + [f"<li>{e(f)}</li>" for f in page["formulas"]] + ["</ul>"]
    out += ["<h2>Assumptions</h2>", "<ul>"] + [f"<li>{e(a)}</li>" for a in page["assumptions"]] + ["</ul>"]
    if page["notes"]:
        out += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{e(n)}</li>" for n in page["notes"]] + ["</ul>"]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _money_tick(y: float, _pos) -> str:
    if y >= 1:
        return f"${y:,.0f}"
    return f"${y:.{min(8, -math.floor(math.log10(y)))}f}" if y > 0 else "$0"


def plot_costs(inputs: CostInputs, projection: dict) -> Figure:
    """Two charts: bars of the monthly cost at the configured volume (self-hosted base model if
    measured, self-hosted with the adapter, each vendor tier), values written on the bars; and the
    monthly cost against audio hours a month, log-log, with the break-even volume marked.

    The bars answer "what does it cost at our volume"; the curve shows where self-hosting starts to
    pay (often at a tiny volume, hence the log scales). The curve's lines: base model, adapter, the
    adapter with the training run paid in the first month (dashed), the vendor tiers (dotted).
    """
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
    bars_ax, curve_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    _cost_bars(bars_ax, inputs, projection)
    _cost_curve(curve_ax, inputs, projection)
    where = "CPU figures: measured on a CPU, not GPU serving" if inputs.is_cpu else f"GPU: {inputs.device}"
    fig.suptitle(f"Monthly transcription cost ({where})", fontsize=11)
    fig.tight_layout()
    return fig


def _cost_bars(ax, inputs: CostInputs, p: dict) -> None:
    options = []
    if p["base"]:
        options.append(("self-hosted\nbase model", p["base"]["usd_per_month"], "tab:gray"))
    options.append((f"self-hosted\nwith adapter\n(+ {_usd(p['training_cost_usd'])} training, once)",
                    p["self_hosted_usd_per_month"], "tab:blue"))
    options.append((f"vendor\n({inputs.vendor_tier} tier)", p["vendor_usd_per_month"], "tab:red"))
    options += [(f"vendor\n({tier} tier)", o["vendor_usd_per_month"], "tab:orange")
                for tier, o in p["other_vendor_tiers"].items()]
    names, values, colors = zip(*options)
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.bar_label(bars, labels=[_usd(v) for v in values], fontsize=9, padding=2)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylim(0, max(values) * 1.15 or 1.0)
    ax.yaxis.set_major_formatter(FuncFormatter(_money_tick))
    ax.set_ylabel("cost per month, USD")
    ax.set_title(f"At the configured {_num(inputs.monthly_audio_hours)} audio hours a month", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)


def _cost_curve(ax, inputs: CostInputs, p: dict) -> None:
    vol = inputs.monthly_audio_hours
    be = p["break_even_audio_hours"]
    anchors = [v for v in (vol, be) if v]
    if anchors:
        x_lo, x_hi = min(anchors) / 10, max(anchors) * 3
    else:
        x_lo, x_hi = 1.0, 1000.0
    xs = np.geomspace(x_lo, x_hi, 200)
    if p["base"]:
        ax.plot(xs, xs * p["base"]["usd_per_audio_hour"], color="tab:gray", label="self-hosted base model")
    ax.plot(xs, xs * p["self_hosted_usd_per_audio_hour"], color="tab:blue", label="self-hosted with adapter")
    ax.plot(xs, xs * p["self_hosted_usd_per_audio_hour"] + p["training_cost_usd"], color="tab:blue",
            linestyle="--", label="with adapter + training run in the first month")
    ax.plot(xs, xs * p["vendor_usd_per_audio_hour"], color="tab:red", label=f"vendor ({inputs.vendor_tier} tier)")
    for tier, o in p["other_vendor_tiers"].items():
        ax.plot(xs, xs * o["vendor_usd_per_audio_hour"], color="tab:orange", linestyle=":",
                label=f"vendor ({tier} tier)")
    if be:
        y_be = be * p["vendor_usd_per_audio_hour"]
        ax.plot([be], [y_be], marker="o", color="black", linestyle="none", label=f"break-even: {_num(be)} audio hours")
        ax.annotate(f"break-even\n{_num(be)} h", (be, y_be), textcoords="offset points", xytext=(8, -24), fontsize=9)
    if vol:
        # axvline is a Line2D too; keep it out of ax.lines' cost curves by drawing a collection.
        ax.vlines([vol], 0, 1, transform=ax.get_xaxis_transform(), colors="grey", linestyles=":",
                  label=f"configured volume ({_num(vol)} h a month)")
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlim(x_lo, x_hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:.2g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(_money_tick))
    ax.set_xlabel("audio hours per month (log scale)")
    ax.set_ylabel("cost per month, USD (log scale)")
    ax.set_title("Where self-hosting starts to pay", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


# --- the report of a run ------------------------------------------------------------------------

PRICES_FILE = "conf/base/parameters_prices.yml"


def device_price(prices: dict, device: str, device_name: str) -> tuple[float, str, str]:
    """Hourly price for the device the numbers were measured on: an exact GPU name, else `gpu`/`cpu`.

    Returns (usd, conf key, the entry's source)."""
    table = prices["device_hour_usd"]
    for key in (device_name, device):
        if key in table:
            return float(table[key]["usd"]), key, table[key]["source"]
    key = "gpu" if device == "cuda" else "cpu"
    if key not in table:
        raise ValueError(f"no hourly price for device {device_name!r}: add `{key}` (or {device_name!r}) under "
                         f"prices.device_hour_usd in {PRICES_FILE}")
    return float(table[key]["usd"]), key, table[key]["source"]


def _wer(eval_metrics: dict, name: str) -> WerFigure:
    normalised = eval_metrics[name]["normalised"]
    ci = normalised.get("wer_ci")  # absent in metrics written before the intervals existed
    return WerFigure(float(normalised["wer"]), tuple(ci) if ci and None not in ci else None)  # tiny sets: no CI


def cost_report(training_metrics: dict, eval_metrics: dict, prices: dict, settings: CostSettings, vertical: str):
    """(Markdown page, matplotlib figure, self-contained HTML page, projection JSON) from the measured run."""
    device = eval_metrics["device"]
    device_name = eval_metrics["device_name"]
    usd, price_key, price_source = device_price(prices, device, device_name)
    as_of = prices.get("as_of", "date not stated")
    tiers = prices["vendor_usd_per_audio_minute"]
    tier = settings.vendor_tier
    if tier not in tiers:
        raise ValueError(f"{vertical}.cost.vendor_tier {tier!r} has no price; add it under "
                         f"prices.vendor_usd_per_audio_minute in {PRICES_FILE} (known: {sorted(tiers)})")
    others = {t: float(v["usd"]) for t, v in tiers.items() if t != tier} if settings.show_other_vendor_tiers else {}
    latency = eval_metrics["latency"]
    run = training_metrics["run_id"]

    def rtf_source(name: str, what: str) -> str:
        entry = latency[name]
        return (f"measured: {what}, batch 1, {entry['segments']} segments of ~{entry['mean_segment_seconds']:.0f} s "
                f"on {device_name}, median of {entry.get('repeats', 1)} rounds (evaluation of training run {run})")

    def price(path: str, source: str) -> str:
        return f"conf prices.{path} ({PRICES_FILE}, as of {as_of}): {source}"

    # Merging folds the adapter into the base weights: the same architecture and work per token, so
    # one timing (the mean of the two measurements) prices both, and timing noise between two
    # measurements cannot make the adapter look dearer or cheaper than the base.
    base_rtf, merged_rtf = latency["base"]["real_time_factor"], latency["adapter"]["real_time_factor"]
    shared_rtf = (base_rtf + merged_rtf) / 2
    shared_source = (f"mean of two measurements on the same architecture, base model {base_rtf:.3g} and adapter merged "
                     f"into the base weights {merged_rtf:.3g}: " + rtf_source("base", "each model"))
    served = eval_metrics.get("served")
    if served:  # the figure of the backend that serves (e.g. CTranslate2 int8), not of the fp32 evaluation
        shared_rtf = served["latency"]["real_time_factor"]
        shared_source = (f"measured: the served model ({served['backend']} {served['compute_type']}, as batch "
                         f"transcription runs it), batch 1, {served['latency']['segments']} segments of "
                         f"~{served['latency']['mean_segment_seconds']:.0f} s on {served['device']} (evaluation of "
                         f"training run {run}); base and merged adapter share it (same architecture); the "
                         f"transformers fp32 figures were {base_rtf:.3g} (base) and {merged_rtf:.3g} (merged)")

    inputs = CostInputs(
        training_device_hours=training_metrics["device_hours"],
        device="cpu" if device == "cpu" else device_name,
        inference_rtf=shared_rtf,
        device_hour_usd=usd,
        vendor_usd_per_audio_minute=float(tiers[tier]["usd"]),
        monthly_audio_hours=float(settings.monthly_audio_hours),
        base_inference_rtf=shared_rtf,
        vendor_tier=tier,
        other_vendor_tiers=others,
        sources={
            "device": f"measured: the device of evaluation (training ran on {training_metrics['device_name']})",
            "training_device_hours": f"measured: training run {run} "
                                     f"({training_metrics['train_seconds']:.0f} s on {training_metrics['device_name']})",
            "inference_rtf": shared_source,
            "base_inference_rtf": shared_source,
            "device_hour_usd": price(f"device_hour_usd.{price_key}", price_source),
            "vendor_usd_per_audio_minute": price(f"vendor_usd_per_audio_minute.{tier}", tiers[tier]["source"]),
            "monthly_audio_hours": f"conf {vertical}.cost.monthly_audio_hours (conf/base/parameters.yml)",
            **{f"other_vendor_tiers.{t}": price(f"vendor_usd_per_audio_minute.{t}", tiers[t]["source"]) for t in others},
        },
    )
    bootstrap = eval_metrics.get("statistics", {}).get("bootstrap", {})
    facts = ReportFacts(
        base_wer=_wer(eval_metrics, "base"),
        adapter_wer=_wer(eval_metrics, "adapter"),
        test_set=f"the {vertical} test split ({eval_metrics['n_utterances']} utterances)",
        control=control_sentence(eval_metrics.get("forgetting")),
        unseen_voices=unseen_voice_sentence(eval_metrics.get("unseen_voices")),
        device_name=device_name,
        adapter_size=adapter_size(eval_metrics.get("adapter_path"), training_metrics["trainable_params"],
                                  training_metrics["total_params"]),
        sources={"wer": f"measured: evaluation of training run {run} on {eval_metrics['n_utterances']} test utterances, "
                        f"normaliser {eval_metrics['normaliser']}"
                        + (f", 95% bootstrap over utterances ({bootstrap['n_resamples']} resamples)"
                           if bootstrap.get("n_resamples") else "")},
    )
    projection = project_costs(inputs)
    notes = [f"Latency per ~{latency['base']['mean_segment_seconds']:.0f}-s segment: base "
             f"{latency_line(eval_metrics, 'base')}, adapter unmerged {latency_line(eval_metrics, 'adapter_unmerged')}, "
             f"merged {latency_line(eval_metrics, 'adapter')}."]
    if served:
        notes.append(f"Priced at the serving path's speed: {served['backend']} {served['compute_type']}, real-time factor "
                     f"{shared_rtf:.3g} ({served['latency']['seconds_per_segment']:.2f} s per segment), against "
                     f"{merged_rtf:.3g} for the transformers fp32 merged adapter. The merged adapter has the base "
                     f"model's architecture, so both are priced from the same timing. Served WER "
                     f"{100 * served['wer']:.1f}% vs {100 * served['wer_fp32']:.1f}% in fp32.")
    else:
        notes.append(f"The merged adapter has the base model's architecture (the adapter is folded into its weights), "
                     f"so both are priced from the same timing: the mean of their two measured real-time factors, "
                     f"{shared_rtf:.3g}. A difference between the two measurements "
                     f"({100 * (merged_rtf / base_rtf - 1):+.0f}% here) is timing noise and the number of tokens each "
                     f"wrote, not a cost of the adapter.")
    if training_metrics.get("device") != device:
        notes.append(f"Training ran on {training_metrics['device_name']} but evaluation on {device_name}; both are "
                     f"priced at the evaluation device's rate here.")
    title = f"{vertical}: cost of self-hosting the adapted model vs a vendor"
    markdown = render_cost_markdown(inputs, projection, title=title, facts=facts, notes=notes)
    figure = plot_costs(inputs, projection)
    page = render_cost_html(inputs, projection, title=title, png=figure_png(figure), facts=facts, notes=notes)
    log.info("%s cost report: self-hosted adapter $%.2f/month vs vendor (%s) $%.2f/month for %.0f audio hours (%s)",
             vertical, projection["self_hosted_usd_per_month"], tier, projection["vendor_usd_per_month"],
             inputs.monthly_audio_hours, "CPU figures" if inputs.is_cpu else inputs.device)
    metrics = {"inputs": asdict(inputs), "facts": asdict(facts), "projection": projection}
    return markdown, figure, page, metrics


def latency_line(eval_metrics: dict, name: str) -> str:
    entry = eval_metrics["latency"][name]
    return f"{entry['seconds_per_segment']:.2f} s (real-time factor {entry['real_time_factor']:.3g})"
