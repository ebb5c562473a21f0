"""Cost-report node: monthly cost self-hosted vs vendor from the measured run."""

from __future__ import annotations

import logging

from vernacular.cost import CostInputs, plot_costs, project_costs, render_cost_markdown

log = logging.getLogger(__name__)


def device_price(prices: dict, device: str, device_name: str) -> tuple[float, str]:
    """Hourly price for the device the numbers were measured on: an exact GPU name, else `gpu`/`cpu`."""
    table = prices["device_hour_usd"]
    for key in (device_name, device):
        if key in table:
            entry = table[key]
            return float(entry["usd"]), f"{key}: {entry['source']}"
    key = "gpu" if device == "cuda" else "cpu"
    if key not in table:
        raise ValueError(f"no hourly price for device {device_name!r}: add `{key}` under prices.device_hour_usd in conf/")
    entry = table[key]
    return float(entry["usd"]), f"{key}: {entry['source']}"


def report_costs(training_metrics: dict, eval_metrics: dict, prices: dict, cost: dict, vertical: str):
    """Return (Markdown report, matplotlib figure, projection JSON)."""
    device = eval_metrics["device"]
    usd, price_source = device_price(prices, device, eval_metrics["device_name"])
    latency = eval_metrics["latency"]["adapter"]
    tiers = prices["vendor_usd_per_audio_minute"]
    tier = cost.get("vendor_tier", "custom")
    if tier not in tiers:
        raise ValueError(f"cost.vendor_tier {tier!r} has no price; add it under prices.vendor_usd_per_audio_minute "
                         f"(known: {sorted(tiers)})")
    vendor = tiers[tier]
    inputs = CostInputs(
        training_device_hours=training_metrics["device_hours"],
        device="cpu" if device == "cpu" else eval_metrics["device_name"],
        inference_rtf=latency["real_time_factor"],
        device_hour_usd=usd,
        vendor_usd_per_audio_minute=float(vendor["usd"]),
        monthly_audio_hours=float(cost["monthly_audio_hours"]),
        sources={
            "device": "the device the run measured (training and inference)",
            "training_device_hours": f"measured: training run {training_metrics['run_id']} "
                                     f"({training_metrics['train_seconds']:.0f} s on {training_metrics['device_name']})",
            "inference_rtf": f"measured: merged adapter, batch 1, {latency['segments']} segments of "
                             f"~{latency['mean_segment_seconds']:.0f} s on {eval_metrics['device_name']}",
            "device_hour_usd": f"conf prices ({price_source}, as of {prices['as_of']})",
            "vendor_usd_per_audio_minute": f"conf prices, tier {tier} ({vendor['source']})",
            "monthly_audio_hours": "conf cost.monthly_audio_hours",
        },
    )
    projection = project_costs(inputs)
    base_wer = eval_metrics["base"]["normalised"]["wer"]
    adapter_wer = eval_metrics["adapter"]["normalised"]["wer"]
    notes = [f"Accuracy on the {vertical} test split ({eval_metrics['n_utterances']} utterances): WER "
             f"{100 * base_wer:.1f}% (base) -> {100 * adapter_wer:.1f}% (adapter), normaliser "
             f"`{eval_metrics['normaliser']}`.",
             f"Adapter: {100 * training_metrics['trainable_fraction']:.2f}% extra parameters; merged into the base "
             f"weights it runs at the base model's speed (base {latency_line(eval_metrics, 'base')}, merged adapter "
             f"{latency_line(eval_metrics, 'adapter')})."]
    base_latency = eval_metrics["latency"]["base"]
    notes.append(f"Self-hosting the base model instead (no adapter) measured a real-time factor of "
                 f"{base_latency['real_time_factor']:.4f}, i.e. "
                 f"${base_latency['real_time_factor'] * usd * inputs.monthly_audio_hours:,.2f} a month at this volume, "
                 f"at the base model's accuracy.")
    markdown = render_cost_markdown(inputs, projection, title=f"{vertical}: self-hosted adapter vs vendor", notes=notes)
    figure = plot_costs(inputs, projection, include_training=True)
    log.info("%s cost report: self-hosted $%.2f/month vs vendor $%.2f/month for %.0f audio hours (%s)", vertical,
             projection["self_hosted_usd_per_month"], projection["vendor_usd_per_month"], inputs.monthly_audio_hours,
             "CPU figures" if inputs.is_cpu else inputs.device)
    return markdown, figure, {"inputs": {**inputs.__dict__}, "projection": projection}


def latency_line(eval_metrics: dict, name: str) -> str:
    entry = eval_metrics["latency"][name]
    return f"{entry['seconds_per_segment']:.2f} s per {entry['mean_segment_seconds']:.0f}-s segment"
