"""Cost-report node: self-hosted base, self-hosted adapter and vendor, from the measured run."""

from __future__ import annotations

import logging
from dataclasses import asdict

from vernacular.config import build_settings
from vernacular.cost import (
    CostInputs,
    CostSettings,
    ReportFacts,
    WerFigure,
    adapter_size,
    figure_png,
    plot_costs,
    project_costs,
    render_cost_html,
    render_cost_markdown,
)

log = logging.getLogger(__name__)
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


def report_costs(training_metrics: dict, eval_metrics: dict, prices: dict, cost: dict, vertical: str):
    """Return (Markdown page, matplotlib figure, self-contained HTML page, projection JSON)."""
    settings = build_settings(CostSettings, cost, f"{vertical}.cost (conf/base/parameters.yml)")
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

    inputs = CostInputs(
        training_device_hours=training_metrics["device_hours"],
        device="cpu" if device == "cpu" else device_name,
        inference_rtf=latency["adapter"]["real_time_factor"],
        device_hour_usd=usd,
        vendor_usd_per_audio_minute=float(tiers[tier]["usd"]),
        monthly_audio_hours=float(settings.monthly_audio_hours),
        base_inference_rtf=latency["base"]["real_time_factor"],
        vendor_tier=tier,
        other_vendor_tiers=others,
        sources={
            "device": f"measured: the device of evaluation (training ran on {training_metrics['device_name']})",
            "training_device_hours": f"measured: training run {run} "
                                     f"({training_metrics['train_seconds']:.0f} s on {training_metrics['device_name']})",
            "inference_rtf": rtf_source("adapter", "adapter merged into the base weights"),
            "base_inference_rtf": rtf_source("base", "base model"),
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
             f"merged {latency_line(eval_metrics, 'adapter')}; the cost uses the merged adapter."]
    gap = latency["adapter"]["real_time_factor"] / latency["base"]["real_time_factor"] - 1
    if abs(gap) > 0.1:
        notes.append(f"Merged, the adapter has the base model's size and work per token; the {100 * gap:+.0f}% gap "
                     f"between their measured real-time factors comes from the number of tokens each writes on these "
                     f"segments and from timing noise.")
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
