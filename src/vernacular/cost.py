"""Self-hosted versus vendor transcription cost, from measured numbers only.

Model of the costs (all prices in USD):

- training run = training_device_hours x device_hour_usd
- self-hosted per audio hour = inference_rtf x device_hour_usd (rtf: processing seconds per
  audio second, so device hours per audio hour)
- vendor per audio hour = vendor_usd_per_audio_minute x 60

Assumptions: the device is rented by the hour and kept fully busy (no idle time, no
batching or queueing overhead beyond what the measured RTF already includes, no spare
capacity for peaks); inference runs on the same kind of device, at the same price, as
training; no engineering, storage, networking, monitoring or re-training cost; the vendor
charges a flat rate per audio minute; a month is 30 days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

DAYS_PER_MONTH = 30
DEVICE_HOURS_PER_MONTH = DAYS_PER_MONTH * 24

_NUMERIC_FIELDS = (
    "training_device_hours",
    "inference_rtf",
    "device_hour_usd",
    "vendor_usd_per_audio_minute",
    "monthly_audio_hours",
)


@dataclass(frozen=True)
class CostInputs:
    """Measured inputs of a cost projection.

    `sources` maps a field name to where its value came from (a run id, a price page, a
    file); fields without an entry are reported as "not stated".
    """

    training_device_hours: float
    device: str
    inference_rtf: float
    device_hour_usd: float
    vendor_usd_per_audio_minute: float
    monthly_audio_hours: float = 10000.0
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _NUMERIC_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value!r}")
        if self.inference_rtf <= 0:
            raise ValueError(f"inference_rtf must be > 0 (processing seconds per audio second), got {self.inference_rtf!r}")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        known = {f.name for f in fields(self)} - {"sources"}
        unknown = set(self.sources) - known
        if unknown:
            raise ValueError(f"sources names unknown field(s) {sorted(unknown)}")

    @property
    def is_cpu(self) -> bool:
        return self.device.strip().lower() == "cpu"


def project_costs(inputs: CostInputs) -> dict:
    """Monthly costs, savings, break-even audio hours and payback days (see module docstring).

    break_even_audio_hours = training cost / (vendor - self-hosted cost per audio hour), the
    audio volume after which the savings have paid for the training run. It and payback_days
    are None when self-hosting is not cheaper per audio hour (it never pays back), and
    payback_days is None when the monthly volume is 0; break_even_note says why in words.
    devices_needed is how many fully busy devices the monthly volume takes (720 h a month each).
    """
    training_cost = inputs.training_device_hours * inputs.device_hour_usd
    self_per_hour = inputs.inference_rtf * inputs.device_hour_usd
    vendor_per_hour = inputs.vendor_usd_per_audio_minute * 60.0
    device_hours = inputs.monthly_audio_hours * inputs.inference_rtf
    self_month = device_hours * inputs.device_hour_usd
    vendor_month = inputs.monthly_audio_hours * vendor_per_hour
    savings_month = vendor_month - self_month
    margin = vendor_per_hour - self_per_hour

    if margin <= 0:
        break_even = None
        payback_days = None
        note = (
            f"Self-hosting costs ${self_per_hour:,.4f} per audio hour against the vendor's "
            f"${vendor_per_hour:,.4f}, so it never pays back the training run."
        )
    else:
        break_even = training_cost / margin
        if inputs.monthly_audio_hours > 0:
            payback_days = break_even / inputs.monthly_audio_hours * DAYS_PER_MONTH
            note = "Savings pay back the training run after break_even_audio_hours of audio."
        else:
            payback_days = None
            note = "No monthly volume, so no payback time; break_even_audio_hours still applies."

    return {
        "device": inputs.device,
        "training_cost_usd": training_cost,
        "self_hosted_device_hours_per_month": device_hours,
        "devices_needed": math.ceil(device_hours / DEVICE_HOURS_PER_MONTH) if device_hours else 0,
        "self_hosted_usd_per_month": self_month,
        "self_hosted_usd_per_audio_hour": self_per_hour,
        "vendor_usd_per_month": vendor_month,
        "vendor_usd_per_audio_hour": vendor_per_hour,
        "monthly_savings_usd": savings_month,
        "savings_pct": savings_month / vendor_month * 100.0 if vendor_month else None,
        "break_even_audio_hours": break_even,
        "payback_days": payback_days,
        "break_even_note": note,
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


def render_cost_markdown(inputs: CostInputs, projection: dict, *, title: str, notes: list[str] = ()) -> str:
    """A manager-readable Markdown page for one projection from `project_costs(inputs)`."""
    p = projection
    vol = inputs.monthly_audio_hours
    lines = [f"# {title}", ""]

    if p["break_even_audio_hours"] is None:
        headline = (
            f"At {_num(vol)} audio hours a month, self-hosting on {inputs.device} would cost "
            f"{_usd(p['self_hosted_usd_per_month'])} against the vendor's {_usd(p['vendor_usd_per_month'])}: "
            f"it is not cheaper and never pays back the {_usd(p['training_cost_usd'])} training run."
        )
    else:
        payback = (
            f"pays back the {_usd(p['training_cost_usd'])} training run in {_duration(p['payback_days'])}"
            if p["payback_days"] is not None
            else f"would pay back the {_usd(p['training_cost_usd'])} training run after "
            f"{_num(p['break_even_audio_hours'])} audio hours"
        )
        headline = (
            f"At {_num(vol)} audio hours a month, self-hosting on {inputs.device} costs "
            f"{_usd(p['self_hosted_usd_per_month'])} against the vendor's {_usd(p['vendor_usd_per_month'])}, "
            f"saving {_usd(p['monthly_savings_usd'])} a month, and {payback}."
        )
    lines += [headline, ""]

    if inputs.is_cpu:
        lines += [
            "> **CPU figures.** These numbers were measured on this machine's CPU. "
            "GPU figures need a GPU run; do not read them off this page.",
            "",
        ]

    def src(name: str) -> str:
        return inputs.sources.get(name, "not stated")

    lines += [
        "## Inputs",
        "",
        "| input | value | source |",
        "|---|---|---|",
        f"| device | {inputs.device} | {src('device')} |",
        f"| training run, device hours | {_num(inputs.training_device_hours)} | {src('training_device_hours')} |",
        f"| inference real-time factor (processing s per audio s) | {_num(inputs.inference_rtf)} | {src('inference_rtf')} |",
        f"| device price per hour | {_usd(inputs.device_hour_usd)} | {src('device_hour_usd')} |",
        f"| vendor price per audio minute | {_usd(inputs.vendor_usd_per_audio_minute)} | {src('vendor_usd_per_audio_minute')} |",
        f"| monthly audio volume, hours | {_num(vol)} | {src('monthly_audio_hours')} |",
        "",
        "## Self-hosted versus vendor",
        "",
        "| | self-hosted | vendor |",
        "|---|---|---|",
        f"| per audio hour | {_usd(p['self_hosted_usd_per_audio_hour'])} | {_usd(p['vendor_usd_per_audio_hour'])} |",
        f"| per month ({_num(vol)} audio hours) | {_usd(p['self_hosted_usd_per_month'])} | {_usd(p['vendor_usd_per_month'])} |",
        f"| device hours per month | {_num(p['self_hosted_device_hours_per_month'])} ({p['devices_needed']} device(s) at {DEVICE_HOURS_PER_MONTH} h a month each) | - |",
        f"| one-off training run | {_usd(p['training_cost_usd'])} | - |",
        "",
        "Monthly savings from self-hosting: "
        + _usd(p["monthly_savings_usd"])
        + (f" ({p['savings_pct']:.1f}% of the vendor bill)." if p["savings_pct"] is not None else "."),
        "",
        "## Break-even and payback",
        "",
    ]
    if p["break_even_audio_hours"] is None:
        lines.append(f"No break-even: {p['break_even_note']}")
    else:
        lines.append(f"- Break-even after {_num(p['break_even_audio_hours'])} audio hours.")
        if p["payback_days"] is not None:
            lines.append(f"- Payback at {_num(vol)} audio hours a month: {_duration(p['payback_days'])}.")
        else:
            lines.append(f"- {p['break_even_note']}")
    lines += [
        "",
        "## Assumptions",
        "",
        "- The device is rented by the hour and kept fully busy: no idle time, no spare capacity for peaks.",
        "- The measured real-time factor holds at production volume; inference uses the same device and price as training.",
        "- No engineering, storage, networking, monitoring or re-training cost is included.",
        "- The vendor charges a flat rate per audio minute; a month is 30 days.",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_costs(inputs: CostInputs, projection: dict, *, include_training: bool = False) -> Figure:
    """Monthly cost against monthly audio hours (0 to twice the configured volume).

    Two lines, self-hosted and vendor, and a vertical marker at the configured volume;
    `include_training` adds a dashed self-hosted line with the training run paid in one month.
    """
    p = projection
    vol = inputs.monthly_audio_hours
    x_max = 2 * vol if vol > 0 else 1.0
    xs = [0.0, x_max]

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
    ax = fig.add_subplot()
    ax.plot(xs, [x * p["self_hosted_usd_per_audio_hour"] for x in xs], label=f"self-hosted ({inputs.device})")
    ax.plot(xs, [x * p["vendor_usd_per_audio_hour"] for x in xs], label="vendor")
    if include_training:
        ax.plot(
            xs,
            [x * p["self_hosted_usd_per_audio_hour"] + p["training_cost_usd"] for x in xs],
            linestyle="--",
            label="self-hosted + training run in one month",
        )
    y_top = max(x_max * p["vendor_usd_per_audio_hour"], x_max * p["self_hosted_usd_per_audio_hour"], 1e-9)
    # vlines (a collection, not a Line2D) keeps ax.lines to the cost curves only.
    ax.vlines([vol], 0, y_top, colors="grey", linestyles=":", label=f"configured volume ({_num(vol)} h)")
    ax.set_xlim(0, x_max)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_major_formatter(StrMethodFormatter("${x:,.0f}" if y_top >= 10 else "${x:,.2f}"))
    ax.set_xlabel("audio hours per month")
    ax.set_ylabel("cost per month (USD)")
    where = "CPU, measured on this machine" if inputs.is_cpu else inputs.device
    ax.set_title(f"Monthly transcription cost ({where})")
    ax.legend()
    fig.tight_layout()
    return fig
