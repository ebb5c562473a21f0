"""Cost projection arithmetic, the side-by-side page (Markdown and HTML), the plot, the report
node on real conf prices, and the page dataset that logs its path."""

import base64
import json
import logging
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from matplotlib.figure import Figure

from tests.paths import REPO, scratch_project
from vernacular.reporting.cost import (
    CPU_LABEL,
    AdapterSize,
    CostInputs,
    ReportFacts,
    WerFigure,
    adapter_size,
    figure_png,
    plot_costs,
    project_costs,
    render_cost_html,
    render_cost_markdown,
)



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


def facts(**overrides):
    values = dict(
        base_wer=WerFigure(0.474, (0.429, 0.521)),
        adapter_wer=WerFigure(0.285, (0.253, 0.318)),
        test_set="the accent test split (400 utterances)",
        device_name="NVIDIA H100",
        adapter_size=AdapterSize(597_670, 147_456, 37_907_712, True, "measured: adapter_model.safetensors in /x"),
        sources={"wer": "evaluation of run abc123"},
    )
    values.update(overrides)
    return ReportFacts(**values)


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
    assert p["break_even_monthly_audio_hours"] == p["break_even_audio_hours"]
    assert p["payback_days"] == pytest.approx(7.5 / 0.31 / 10000 * 30)
    assert p["base"] is None and p["other_vendor_tiers"] == {}


def test_base_column_and_other_tier_by_hand():
    inputs = gpu_inputs(base_inference_rtf=0.03, vendor_tier="custom", other_vendor_tiers={"medical": 0.004})
    p = project_costs(inputs)
    base = p["base"]
    # base: 0.03 x $2.5 = $0.075 per audio hour, no training run
    assert base["usd_per_audio_hour"] == pytest.approx(0.075)
    assert base["usd_per_month"] == pytest.approx(750.0)
    assert base["device_hours_per_month"] == pytest.approx(300.0)
    assert base["monthly_savings_usd"] == pytest.approx(3600.0 - 750.0)
    assert base["cheaper_than_vendor"] is True
    medical = p["other_vendor_tiers"]["medical"]
    # $0.004 x 60 = $0.24 per audio hour; break-even $7.5 / ($0.24 - $0.05)
    assert medical["vendor_usd_per_month"] == pytest.approx(2400.0)
    assert medical["monthly_savings_usd"] == pytest.approx(1900.0)
    assert medical["break_even_audio_hours"] == pytest.approx(7.5 / 0.19)
    assert medical["payback_days"] == pytest.approx(7.5 / 0.19 / 10000 * 30)
    # the configured tier's figures are unchanged by the extra tier
    assert p["break_even_audio_hours"] == pytest.approx(7.5 / 0.31)


def test_devices_needed_beyond_one_device_month():
    # 10000 audio h x rtf 0.5 = 5000 device h; 720 h per device-month -> 7 devices
    p = project_costs(gpu_inputs(inference_rtf=0.5))
    assert p["self_hosted_device_hours_per_month"] == pytest.approx(5000.0)
    assert p["devices_needed"] == 7


def test_self_hosting_not_cheaper_never_pays_back():
    inputs = gpu_inputs(inference_rtf=1.0, device_hour_usd=3.0, base_inference_rtf=1.0)
    p = project_costs(inputs)
    assert p["self_hosted_usd_per_audio_hour"] == pytest.approx(3.0)
    assert p["monthly_savings_usd"] == pytest.approx(3600.0 - 30000.0)
    assert p["break_even_audio_hours"] is None and p["payback_days"] is None
    assert p["base"]["cheaper_than_vendor"] is False
    assert "never pays back" in p["break_even_note"]
    page = render_cost_markdown(inputs, p, title="t")
    assert "not cheaper" in page
    assert "| break-even monthly volume | never (dearer per audio hour) | never (not cheaper per audio hour) |" in page


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
        ("base_inference_rtf", 0.0, "base_inference_rtf must be > 0"),
        ("device_hour_usd", "2.5", "device_hour_usd must be a number"),
        ("device", " ", "device must be a non-empty string"),
        ("other_vendor_tiers", {"medical": -1.0}, "other_vendor_tiers.medical must be non-negative"),
        ("other_vendor_tiers", {"vendor": 0.1}, "repeats the configured vendor_tier"),
        ("sources", {"gpu_price": "x"}, "unknown field"),
    ],
)
def test_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        gpu_inputs(**{field: value})


def test_sources_may_name_each_other_tier():
    inputs = gpu_inputs(other_vendor_tiers={"medical": 0.004}, sources={"other_vendor_tiers.medical": "conf X"})
    page = render_cost_markdown(inputs, project_costs(inputs), title="t")
    assert "| vendor price per audio minute, medical tier | $0.0040 | conf X |" in page


def test_adapter_size_measured_from_files_else_estimated(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\0" * 1234)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "README.md").write_text("an adapter card is not weights" * 10)
    size = adapter_size(tmp_path, 100, 10_000)
    assert size.measured and size.bytes == 1234 + 2
    assert "adapter_model.safetensors + adapter_config.json" in size.detail
    assert size.fraction == pytest.approx(0.01)

    missing = adapter_size(tmp_path / "gone", 100, 10_000)
    assert not missing.measured and missing.bytes == 400
    assert "estimated: 100 trainable parameters x 4 bytes" in missing.detail and "gone" in missing.detail
    assert "no adapter path" in adapter_size(None, 100, 10_000).detail


def side_by_side(page: str) -> dict[str, list[str]]:
    """The Markdown side-by-side table as {row label: cells}."""
    table = page.split("## Side by side")[1].split("\n\n")[1]
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def test_markdown_side_by_side_gpu():
    inputs = gpu_inputs(base_inference_rtf=0.03, vendor_tier="custom", other_vendor_tiers={"medical": 0.004})
    page = render_cost_markdown(inputs, project_costs(inputs), title="Accent ASR cost", facts=facts(), notes=["n1"])
    assert page.startswith("# Accent ASR cost\n")
    assert "base model 47.4% [42.9, 52.1], with the adapter 28.5% [25.3, 31.8]" in page
    assert CPU_LABEL not in page and "GPU figures: measured on NVIDIA H100." in page
    table = side_by_side(page)
    header = page.split("## Side by side")[1].split("\n\n")[1].splitlines()[0]
    assert "self-hosted base model" in header and "self-hosted with adapter (merged)" in header
    assert "vendor (custom tier)" in header and "vendor (medical tier)" in header
    assert table["word error rate, test split (95% CI)"][:2] == ["47.4% [42.9, 52.1]", "28.5% [25.3, 31.8]"]
    assert table["cost a month at 10,000 audio hours"] == ["$750.00", "$500.00", "$3,600.00", "$2,400.00"]
    assert table["cost per audio hour"] == ["$0.0750", "$0.0500", "$0.3600", "$0.2400"]
    assert table["one-off training cost"][:2] == ["none", "$7.50"]
    assert table["savings a month vs vendor (custom tier)"][:2] == ["$2,850.00 (79.2%)", "$3,100.00 (86.1%)"]
    assert table["break-even monthly volume"][1] == "24.19 audio hours"
    # 7.5 / 0.31 / 10000 * 30 days = 0.0726 days = 1.7 hours
    assert table["payback of the training run at 10,000 audio hours a month"][1] == "1.7 hours"
    assert table["adapter size"][1] == "0.60 MB (measured on disk); 0.39% of parameters (147,456 of 37,907,712)"
    assert table["device"] == ["NVIDIA H100; GPU figures"] * 2 + ["vendor's servers"] * 2
    assert "Against the medical tier ($0.0040 per audio minute)" in page and "$1,900.00 (79.2%)" in page
    assert "| real-time factor, adapter merged (processing s per audio s) | 0.02 | run abc123, 40 held-out clips |" in page
    assert "| device price per hour | $2.50 | not stated |" in page
    assert "| word error rate, base / adapter | 47.4% [42.9, 52.1] / 28.5% [25.3, 31.8] | evaluation of run abc123 |" in page
    assert "break-even volume = training cost / (vendor - self-hosted cost per audio hour)" in page
    assert "no idle time" in page and "- n1" in page


def test_page_follows_its_inputs():
    def table(**overrides):
        inputs = gpu_inputs(base_inference_rtf=0.03, **overrides)
        return side_by_side(render_cost_markdown(inputs, project_costs(inputs), title="t", facts=facts()))

    before, after = table(), table(monthly_audio_hours=20000.0, device_hour_usd=5.0)
    assert "cost a month at 20,000 audio hours" in after and "cost a month at 10,000 audio hours" not in after
    # doubling the price doubles every self-hosted figure; the vendor's does not move with it
    assert after["cost per audio hour"][:3] == ["$0.1500", "$0.1000", "$0.3600"]
    assert after["one-off training cost"][1] == "$15.00" != before["one-off training cost"][1]
    assert after["break-even monthly volume"][1] == "57.69 audio hours"  # 15 / (0.36 - 0.10)


@pytest.mark.parametrize("device", ["cpu", "CPU"])
def test_cpu_label(device):
    inputs = gpu_inputs(device=device, inference_rtf=0.05, device_hour_usd=0.1)
    p = project_costs(inputs)
    page = render_cost_markdown(inputs, p, title="t", facts=facts(device_name="cpu (2 cores, 2 threads)"))
    assert f"> **{CPU_LABEL}**" in page
    assert "GPU figures" not in page
    # the label sits right under the headline, before the tables
    assert page.index(CPU_LABEL) < page.index("## Side by side")
    assert side_by_side(page)["device"][0] == "cpu (2 cores, 2 threads); CPU figures"


class PageParser(HTMLParser):
    """Checks nesting of non-void elements and collects images, links, table cells and text."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.links, self.text = [], [], [], [], []
        self.tables, self._row = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "a":
            self.links.append(attrs.get("href"))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self._row = []
            self.tables[-1].append(self._row)
        if tag in ("td", "th"):
            self._row.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if {"td", "th"} & set(self.stack) and self._row is not None:
            self._row[-1] += data


def html_page(inputs, f=None, notes=()):
    p = project_costs(inputs)
    fig = plot_costs(inputs, p)
    png = figure_png(fig)
    return render_cost_html(inputs, p, title="Accent <cost>", png=png, facts=f or facts(), notes=notes), png


def test_html_page_is_well_formed_self_contained_and_has_the_table():
    inputs = gpu_inputs(base_inference_rtf=0.03, vendor_tier="custom", other_vendor_tiers={"medical": 0.004},
                        sources={"device_hour_usd": "conf prices.device_hour_usd.x: see https://example.com/p?a=1"})
    page, png = html_page(inputs, notes=["a & b"])
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert page.startswith("<!DOCTYPE html>")
    (image,) = parser.images
    assert image["src"].startswith("data:image/png;base64,")
    assert base64.b64decode(image["src"].split(",", 1)[1]) == png
    assert "https://example.com/p?a=1" in parser.links
    assert not any(link for link in parser.links if not link.startswith("https://example.com"))  # nothing else fetched
    text = "".join(parser.text)
    assert "Accent <cost>" in text and "a & b" in text  # escaped in the source, intact once parsed
    assert "GPU figures: measured on NVIDIA H100." in text and CPU_LABEL not in text
    side, sources = parser.tables
    assert side[0] == ["", "self-hosted base model", "self-hosted with adapter (merged)", "vendor (custom tier)",
                       "vendor (medical tier)"]
    rows = {r[0]: r[1:] for r in side[1:]}
    assert rows["cost a month at 10,000 audio hours"] == ["$750.00", "$500.00", "$3,600.00", "$2,400.00"]
    assert rows["word error rate, test split (95% CI)"][:2] == ["47.4% [42.9, 52.1]", "28.5% [25.3, 31.8]"]
    assert {"break-even monthly volume", "payback of the training run at 10,000 audio hours a month",
            "adapter size", "device", "savings a month vs vendor (custom tier)"} <= set(rows)
    assert sources[0] == ["figure", "value", "source"]
    assert ["device price per hour", "$2.50", "conf prices.device_hour_usd.x: see https://example.com/p?a=1"] in sources


def test_html_page_cpu_label_and_changes_with_inputs():
    cpu = gpu_inputs(device="cpu", device_hour_usd=0.1)
    page, _ = html_page(cpu, facts(device_name="cpu (2 cores, 2 threads)"))
    assert '<p class="label cpu">' + CPU_LABEL + "</p>" in page
    assert "NVIDIA" not in page
    other, _ = html_page(gpu_inputs(device="cpu", device_hour_usd=0.2), facts(device_name="cpu (2 cores, 2 threads)"))
    assert "$0.0020" in page and "$0.0040" in other  # self-hosted cost per audio hour follows the price


def test_html_rejects_what_is_not_a_png():
    inputs = gpu_inputs()
    with pytest.raises(ValueError, match="PNG"):
        render_cost_html(inputs, project_costs(inputs), title="t", png=b"GIF89a")


def test_plot_lines_and_break_even_marker():
    inputs = gpu_inputs(base_inference_rtf=0.03, vendor_tier="custom", other_vendor_tiers={"medical": 0.004})
    p = project_costs(inputs)
    bars, ax = plot_costs(inputs, p).axes
    # the bars: monthly cost of each option at the configured volume, the value written on each
    heights = [patch.get_height() for patch in bars.patches]
    assert heights == pytest.approx([p["base"]["usd_per_month"], p["self_hosted_usd_per_month"],
                                     p["vendor_usd_per_month"], p["other_vendor_tiers"]["medical"]["vendor_usd_per_month"]])
    names = [t.get_text() for t in bars.get_xticklabels()]
    assert names[0].startswith("self-hosted\nbase") and "(+ $7.50 training, once)" in names[1]
    assert names[2:] == ["vendor\n(custom tier)", "vendor\n(medical tier)"]
    assert [t.get_text() for t in bars.texts] == ["$750.00", "$500.00", "$3,600.00", "$2,400.00"]
    assert bars.get_yscale() == "linear" and "10,000" in bars.get_title()
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"self-hosted base model", "self-hosted with adapter",
                          "with adapter + training run in the first month", "vendor (custom tier)",
                          "vendor (medical tier)", "break-even: 24.19 audio hours"}
    x = lines["vendor (custom tier)"].get_xdata()
    assert x[0] < p["break_even_audio_hours"] < inputs.monthly_audio_hours < x[-1]
    assert lines["self-hosted with adapter"].get_ydata()[-1] == pytest.approx(x[-1] * 0.05)
    assert lines["self-hosted base model"].get_ydata()[-1] == pytest.approx(x[-1] * 0.075)
    assert lines["with adapter + training run in the first month"].get_ydata()[0] == pytest.approx(x[0] * 0.05 + 7.5)
    ((bx, by),) = lines["break-even: 24.19 audio hours"].get_xydata()
    # the marker is where the dashed line meets the vendor's
    assert bx == pytest.approx(7.5 / 0.31) and by == pytest.approx(bx * 0.36) == pytest.approx(bx * 0.05 + 7.5)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "USD" in ax.get_ylabel() and "hours" in ax.get_xlabel()
    title = ax.figure.texts[0].get_text()  # suptitle
    assert "NVIDIA H100" in title and "CPU" not in title


def test_plot_without_break_even_or_base(tmp_path):
    inputs = gpu_inputs(device="cpu", inference_rtf=1.0, device_hour_usd=3.0)
    fig = plot_costs(inputs, project_costs(inputs))
    labels = [line.get_label() for line in fig.axes[1].lines]
    assert not any(label.startswith("break-even") for label in labels)
    assert "self-hosted base model" not in labels
    assert len(fig.axes[0].patches) == 2  # adapter and vendor bars, no base
    assert "CPU" in fig.texts[0].get_text()
    assert figure_png(fig).startswith(b"\x89PNG")


# --- the report node, on the project's own price file ----------------------------------------


def prices():
    return yaml.safe_load((REPO / "conf/base/parameters_prices.yml").read_text())["prices"]


def run_metrics(tmp_path, device="cpu", device_name="cpu (2 cores, 2 threads)"):
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 589_900)
    (adapter / "adapter_config.json").write_text("{}")
    training = {"run_id": "r1", "device": device, "device_name": device_name, "device_hours": 0.5,
                "train_seconds": 1800.0, "trainable_params": 147_456, "total_params": 37_907_712}

    def latency(rtf):
        return {"segments": 3, "repeats": 2, "mean_segment_seconds": 25.0, "seconds_per_segment": 25.0 * rtf,
                "real_time_factor": rtf}

    evaluation = {
        "device": device, "device_name": device_name, "n_utterances": 40, "normaliser": "whisper_english",
        "base": {"normalised": {"wer": 0.5, "wer_ci": [0.4, 0.6]}},
        "adapter": {"normalised": {"wer": 0.2, "wer_ci": [0.15, 0.25]}},
        "latency": {"base": latency(0.1), "adapter_unmerged": latency(0.13), "adapter": latency(0.1)},
        "statistics": {"bootstrap": {"n_resamples": 2000}},
        "adapter_path": str(adapter),
    }
    return training, evaluation


COST = {"monthly_audio_hours": 10000, "vendor_tier": "custom", "show_other_vendor_tiers": True}


def test_report_node_cpu_run(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    training, evaluation = run_metrics(tmp_path)
    markdown, figure, page, metrics = report_costs(training, evaluation, prices(), COST, "accent")
    conf = prices()
    cpu_usd = conf["device_hour_usd"]["cpu"]["usd"]
    assert metrics["projection"]["self_hosted_usd_per_month"] == pytest.approx(10000 * 0.1 * cpu_usd)
    assert metrics["projection"]["training_cost_usd"] == pytest.approx(0.5 * cpu_usd)
    assert metrics["facts"]["adapter_size"]["measured"] and metrics["facts"]["adapter_size"]["bytes"] == 589_902
    json.dumps(metrics)
    for text in (markdown, page):
        assert CPU_LABEL in text
        assert "50.0% [40.0, 60.0]" in text and "20.0% [15.0, 25.0]" in text
        assert "vendor (custom tier)" in text and "vendor (medical tier)" in text
        assert "prices.device_hour_usd.cpu (conf/base/parameters_prices.yml, as of " in text
        assert conf["vendor_usd_per_audio_minute"]["medical"]["source"].split(" (")[0] in text
    assert isinstance(figure, Figure)
    assert "data:image/png;base64," in page


def test_the_pages_headline_carries_the_real_speech_control_figure(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    training, evaluation = run_metrics(tmp_path)
    markdown, _, page, _ = report_costs(training, evaluation, prices(), COST, "accent")
    assert "general speech" not in markdown  # no control set recorded: nothing claimed
    evaluation["forgetting"] = {"enabled": True, "kind": "real", "n_utterances": 130, "flagged": True,
                                "margin_pts": 1.0, "wer_change_pts": 3.2, "base": {"wer": 0.05},
                                "adapter": {"wer": 0.082}, "by_set": {}}
    markdown, _, page, _ = report_costs(training, evaluation, prices(), COST, "accent")
    headline = markdown.split("\n")[2]
    assert "On real general speech it was not trained for (130 recordings" in headline
    assert "rose from 5.0% to 8.2%" in headline and "flagged" in headline
    assert "rose from 5.0% to 8.2%" in page


def test_base_and_merged_adapter_are_priced_from_one_timing_and_the_page_explains_it(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    training, evaluation = run_metrics(tmp_path)
    evaluation["latency"]["adapter"] = {**evaluation["latency"]["base"], "real_time_factor": 0.12}  # noisy timing
    markdown, _, page, metrics = report_costs(training, evaluation, prices(), COST, "accent")
    inputs, projection = metrics["inputs"], metrics["projection"]
    assert inputs["inference_rtf"] == inputs["base_inference_rtf"] == pytest.approx(0.11)
    assert projection["base"]["usd_per_month"] == pytest.approx(projection["self_hosted_usd_per_month"])
    for text in (markdown, page):
        assert "priced from the same timing" in text and "+20% here" in text
        # the default vendor tier's price is a planning assumption, and the page says so up front
        assert "is an assumption, not a quote" in text.split("|")[0]
        assert "Break-even, in words: each audio hour self-hosted instead of sent to the vendor saves" in text


def test_the_cost_uses_the_serving_paths_speed_when_the_evaluation_measured_it(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    training, evaluation = run_metrics(tmp_path)
    evaluation["served"] = {"backend": "ctranslate2", "compute_type": "int8", "device": "cpu (2 cores), CTranslate2 int8",
                            "wer": 0.204, "wer_fp32": 0.2, "wer_change_pts": 0.4, "within_half_point": True,
                            "latency": {"segments": 3, "repeats": 2, "mean_segment_seconds": 25.0,
                                        "seconds_per_segment": 0.5, "real_time_factor": 0.02}}
    markdown, _, page, metrics = report_costs(training, evaluation, prices(), COST, "accent")
    inputs = metrics["inputs"]
    assert inputs["inference_rtf"] == inputs["base_inference_rtf"] == 0.02
    cpu_usd = prices()["device_hour_usd"]["cpu"]["usd"]
    assert metrics["projection"]["self_hosted_usd_per_month"] == pytest.approx(10000 * 0.02 * cpu_usd)
    for text in (markdown, page):
        assert "the served model (ctranslate2 int8" in text and "transformers fp32 figures were 0.1" in text
        assert "Priced at the serving path" in text and "Served WER 20.4% vs 20.0% in fp32" in text


def test_report_node_gpu_run_uses_the_card_price_and_name(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    card = "NVIDIA H100 80GB HBM3"
    training, evaluation = run_metrics(tmp_path, device="cuda", device_name=card)
    evaluation["adapter_path"] = str(tmp_path / "moved")
    markdown, _, page, metrics = report_costs(training, evaluation, prices(), {**COST, "show_other_vendor_tiers": False},
                                              "radiology")
    assert metrics["inputs"]["device_hour_usd"] == prices()["device_hour_usd"][card]["usd"]
    assert metrics["facts"]["adapter_size"] == {**metrics["facts"]["adapter_size"], "measured": False,
                                                "bytes": 147_456 * 4}
    for text in (markdown, page):
        assert f"GPU figures: measured on {card}." in text
        assert CPU_LABEL not in text and "medical tier" not in text
        assert "estimated: 147,456 trainable parameters x 4 bytes" in text


def test_report_node_names_the_bad_setting(tmp_path):
    from vernacular.pipelines.reporting.nodes import report_costs

    training, evaluation = run_metrics(tmp_path)
    with pytest.raises(ValueError, match=r"unknown setting.*cost\.monthly_hours"):
        report_costs(training, evaluation, prices(), {"monthly_hours": 5}, "accent")
    with pytest.raises(ValueError, match="vendor_tier 'gold'.*parameters_prices.yml"):
        report_costs(training, evaluation, prices(), {**COST, "vendor_tier": "gold"}, "accent")


# --- the page dataset and the link in the run's log -------------------------------------------


def test_page_dataset_logs_the_real_versioned_path(tmp_path, caplog):
    from kedro.io.core import Version

    from vernacular.catalog_datasets import ReportPageDataset

    target = tmp_path / "reports" / "cost_report.html"
    first = ReportPageDataset(filepath=str(target), label="cost report", version=Version(None, "2026-01-01T00.00.00.000Z"))
    with caplog.at_level(logging.INFO, logger="vernacular.catalog_datasets"):
        first.save("<p>one</p>")
    (record,) = [r for r in caplog.records if r.getMessage().startswith("cost report: ")]
    uri = record.getMessage().removeprefix("cost report: ")
    saved = target / "2026-01-01T00.00.00.000Z" / "cost_report.html"
    assert uri == saved.resolve().as_uri() and uri.startswith("file:///")
    assert saved.read_text() == "<p>one</p>"
    assert [p.name for p in saved.parent.iterdir()] == ["cost_report.html"]  # no temporary left behind

    second = ReportPageDataset(filepath=str(target), label="cost report", version=Version(None, "2026-01-02T00.00.00.000Z"))
    second.save("<p>two</p>")
    assert saved.read_text() == "<p>one</p>"  # an earlier page is never overwritten
    assert ReportPageDataset(filepath=str(target), version=Version(None, None)).load() == "<p>two</p>"
    with pytest.raises(Exception, match="must not exist"):
        first.save("<p>again</p>")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_reporting_node_through_kedro_logs_the_page_link(tmp_path):
    """The catalog entry, the pipeline wiring and the log line, through a Kedro session."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = scratch_project(tmp_path / "project")
    training, evaluation = run_metrics(tmp_path)
    version = "2026-01-01T00.00.00.000Z"
    for path, data in (("data/07_model_output/finance/training_metrics.json", training),
                       ("data/08_reporting/finance/eval_metrics.json", evaluation)):
        file = root / path / version / Path(path).name
        file.parent.mkdir(parents=True)
        file.write_text(json.dumps(data))
    # Kedro's logging setup drops the handlers of root and of the project's loggers (caplog's too),
    # so listen once the session exists.
    logger, collect = logging.getLogger("vernacular.catalog_datasets"), Collect()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            bootstrap_project(root)
            with KedroSession.create(project_path=root) as session:
                logger.addHandler(collect)
                session.run(pipeline_name="finance.reporting", node_names=["finance.report_costs"])
    finally:
        logger.removeHandler(collect)
    (line,) = [m for m in collect.messages if m.startswith("cost report: file:///")]
    page = Path(line.removeprefix("cost report: file://"))
    assert page.is_file() and page.parent.parent == (root / "data/08_reporting/finance/cost_report.html").resolve()
    assert CPU_LABEL in page.read_text() and "data:image/png;base64," in page.read_text()
    for name in ("cost_report.md", "cost_plot.png", "cost_metrics.json"):
        assert len(list((root / "data/08_reporting/finance" / name).iterdir())) == 1, name


def test_wer_without_an_interval_prints_the_rate_alone():
    # a test set too small for the bootstrap gives (None, None): the page must still render
    assert WerFigure(0.5, (None, None)).text() == "50.0%"
    assert WerFigure(0.5, (0.4, 0.6)).text() == "50.0% [40.0, 60.0]"


def test_cost_page_as_headless_chromium_draws_it_and_a_broken_page_fails_the_check(tmp_path):
    from tools.chromium import BrowserError, find_chromium
    from tools.page_screenshot import capture_page, inspect_page, page_problems

    if find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    inputs = gpu_inputs(base_inference_rtf=0.03, vendor_tier="custom", other_vendor_tiers={"medical": 0.004})
    page, _ = html_page(inputs)
    good = tmp_path / "cost.html"
    good.write_text(page, encoding="utf-8")
    drawn = capture_page(good, tmp_path / "cost.png", window=(1200, 1400), expect="Accent <cost>")
    (chart,) = drawn["images"]
    assert chart["width"] > 1000 and chart["shown"] <= 1200  # decoded, scaled to the window
    assert drawn["tables"] == 2
    assert "saving $3,100.00 a month" in drawn["text"].split("Side by side")[0]  # the money sentence comes first
    narrow = capture_page(good, tmp_path / "narrow.png", window=(420, 900))  # a phone: no sideways scrolling
    assert narrow["images"][0]["shown"] <= 420
    # the same check on a page with an image that does not decode and a row wider than the window
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                      .replace("<h2>", '<div style="width:3000px">wide</div><h2>', 1), encoding="utf-8")
    problems = page_problems(inspect_page(broken, window=(1200, 1400)), expect="Accent <cost>")
    assert any("did not decode" in p for p in problems) and any("sideways" in p for p in problems), problems
    with pytest.raises(BrowserError, match="did not decode"):
        capture_page(broken, tmp_path / "broken.png")
    assert not (tmp_path / "broken.png").exists()
