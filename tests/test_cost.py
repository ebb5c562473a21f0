"""Cost projection arithmetic, the report page and the plot."""

import math

import pytest
from matplotlib.figure import Figure

from vernacular.cost import CostInputs, plot_costs, project_costs, render_cost_markdown


def gpu_inputs(**overrides):
    values = dict(
        training_device_hours=3.0,
        device="NVIDIA H100",
        inference_rtf=0.02,
        device_hour_usd=2.5,
        vendor_usd_per_audio_minute=0.006,
        monthly_audio_hours=10000.0,
        sources={"inference_rtf": "run abc123, 40 held-out clips"},
    )
    values.update(overrides)
    return CostInputs(**values)


def test_projection_arithmetic_by_hand():
    p = project_costs(gpu_inputs())
    # training 3 h x $2.5; 0.02 device h per audio h x $2.5 = $0.05; vendor $0.006 x 60 = $0.36
    assert p["training_cost_usd"] == pytest.approx(7.5)
    assert p["self_hosted_usd_per_audio_hour"] == pytest.approx(0.05)
    assert p["self_hosted_device_hours_per_month"] == pytest.approx(200.0)
    assert p["devices_needed"] == 1
    assert p["self_hosted_usd_per_month"] == pytest.approx(500.0)
    assert p["vendor_usd_per_audio_hour"] == pytest.approx(0.36)
    assert p["vendor_usd_per_month"] == pytest.approx(3600.0)
    assert p["monthly_savings_usd"] == pytest.approx(3100.0)
    assert p["savings_pct"] == pytest.approx(3100 / 3600 * 100)
    # $7.5 / ($0.36 - $0.05) per audio hour
    assert p["break_even_audio_hours"] == pytest.approx(7.5 / 0.31)
    assert p["payback_days"] == pytest.approx(7.5 / 0.31 / 10000 * 30)


def test_devices_needed_beyond_one_device_month():
    # 10000 audio h x rtf 0.5 = 5000 device h; 720 h per device-month -> 7 devices
    p = project_costs(gpu_inputs(inference_rtf=0.5))
    assert p["self_hosted_device_hours_per_month"] == pytest.approx(5000.0)
    assert p["devices_needed"] == 7


def test_self_hosting_not_cheaper_never_pays_back():
    inputs = gpu_inputs(inference_rtf=1.0, device_hour_usd=3.0)
    p = project_costs(inputs)
    assert p["self_hosted_usd_per_audio_hour"] == pytest.approx(3.0)
    assert p["monthly_savings_usd"] == pytest.approx(3600.0 - 30000.0)
    assert p["break_even_audio_hours"] is None and p["payback_days"] is None
    assert "never pays back" in p["break_even_note"]
    page = render_cost_markdown(inputs, p, title="t")
    assert "not cheaper" in page and "No break-even" in page


def test_zero_volume_has_break_even_but_no_payback():
    p = project_costs(gpu_inputs(monthly_audio_hours=0.0))
    assert p["break_even_audio_hours"] == pytest.approx(7.5 / 0.31)
    assert p["payback_days"] is None
    assert p["savings_pct"] is None
    assert isinstance(plot_costs(gpu_inputs(monthly_audio_hours=0.0), p), Figure)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("training_device_hours", -1.0, "training_device_hours must be non-negative"),
        ("device_hour_usd", -0.1, "device_hour_usd must be non-negative"),
        ("vendor_usd_per_audio_minute", -0.006, "vendor_usd_per_audio_minute must be non-negative"),
        ("monthly_audio_hours", -5.0, "monthly_audio_hours must be non-negative"),
        ("inference_rtf", 0.0, "inference_rtf must be > 0"),
        ("inference_rtf", math.nan, "inference_rtf must be finite"),
        ("device_hour_usd", "2.5", "device_hour_usd must be a number"),
        ("device", " ", "device must be a non-empty string"),
        ("sources", {"gpu_price": "x"}, "unknown field"),
    ],
)
def test_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        gpu_inputs(**{field: value})


def test_markdown_page_gpu():
    inputs = gpu_inputs()
    page = render_cost_markdown(inputs, project_costs(inputs), title="Radiology ASR cost", notes=["WER 19.6%"])
    assert page.startswith("# Radiology ASR cost\n")
    assert "CPU figures" not in page
    for text in ("$500.00", "$3,600.00", "$3,100.00", "$0.0500", "$0.3600", "86.1%", "$7.50"):
        assert text in page, text
    assert "| inference real-time factor (processing s per audio s) | 0.02 | run abc123, 40 held-out clips |" in page
    assert "| device | NVIDIA H100 | not stated |" in page
    assert "Break-even after 24.19 audio hours" in page
    # 7.5 / 0.31 / 10000 * 30 days = 0.0726 days = 1.7 hours
    assert "1.7 hours" in page
    assert "no idle time" in page
    assert "- WER 19.6%" in page


@pytest.mark.parametrize("device", ["cpu", "CPU"])
def test_markdown_page_cpu_label(device):
    inputs = gpu_inputs(device=device, inference_rtf=0.05, device_hour_usd=0.1)
    page = render_cost_markdown(inputs, project_costs(inputs), title="t")
    assert "**CPU figures.**" in page
    assert "GPU figures need a GPU run" in page
    # the label sits right under the headline, before the tables
    assert page.index("CPU figures") < page.index("## Inputs")


def test_plot_two_cost_lines():
    inputs = gpu_inputs()
    p = project_costs(inputs)
    fig = plot_costs(inputs, p)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    self_line, vendor_line = ax.lines
    assert list(self_line.get_xdata()) == [0.0, 20000.0]
    assert self_line.get_ydata()[-1] == pytest.approx(20000 * 0.05)
    assert vendor_line.get_ydata()[-1] == pytest.approx(20000 * 0.36)
    assert "USD" in ax.get_ylabel() and "hours" in ax.get_xlabel()
    assert "CPU" not in ax.get_title()
    assert len(plot_costs(inputs, p, include_training=True).axes[0].lines) == 3


def test_plot_title_says_cpu(tmp_path):
    inputs = gpu_inputs(device="cpu")
    fig = plot_costs(inputs, project_costs(inputs))
    assert "CPU" in fig.axes[0].get_title()
    fig.savefig(tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000
