"""Where the served model's extra WER comes from: weight precision or served decoding.

The evaluation's serving check compares the CTranslate2 model that batch transcription serves
(int8 on CPU, faster-whisper, VAD segments, temperature fallback) with the fp32 transformers
adapter on the test split. This re-transcribes the same test clips (the newest evaluation's
`<vertical>.transcripts`) with the same adapter under several serving variants, one setting
changed at a time, and prints each one's WER beside the fp32 figure. Run from the project folder
after a training run:

    python -m benchmarks.served_precision --vertical radiology --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time

# name -> changes to the configured `transcription.ct2` settings
VARIANTS = {
    "served (configured)": {},
    "float32 weights": {"quantization": "float32"},
    "int16 weights": {"quantization": "int16"},
    "int8, no VAD (one 30-s window per clip)": {"vad_filter": False},
    "float32, no VAD": {"quantization": "float32", "vad_filter": False},
    "int8, no temperature fallback": {"temperatures": [0.0]},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vertical", default="radiology")
    parser.add_argument("--env", default=None, help="Kedro environment of the run (e.g. speechocean)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help=f"subset of: {'; '.join(VARIANTS)}")
    args = parser.parse_args(argv)

    from vernacular.catalog_datasets import ProjectCatalog
    from vernacular.data.audio import TARGET_SAMPLE_RATE, read_audio
    from vernacular.evaluation.metrics import error_rates, normalise
    from vernacular.serving.batch import BatchSettings, load_transcriber

    catalog = ProjectCatalog(env=args.env)
    name = f"{args.vertical}.transcripts"
    if not catalog.catalog.exists(name):
        print(f"no {name}: run `kedro run --pipeline={args.vertical}` first", file=sys.stderr)
        return 2
    rows = catalog.catalog.load(name)
    adapter, base = catalog.latest_adapter(args.vertical), catalog.base_model(args.vertical)
    configured = BatchSettings.from_dict({**(catalog.parameters[args.vertical].get("transcription") or {}),
                                          "device": "cpu", "progress": False})
    ct2_cache = catalog.storage(args.vertical).ct2_cache_dir
    audios = [read_audio(p) for p in rows["audio_path"]]
    seconds = sum(len(a) for a in audios) / TARGET_SAMPLE_RATE
    refs = [normalise(t, "whisper_english") for t in rows["reference"]]

    def wer(texts) -> float:
        return 100 * error_rates(refs, [normalise(str(t), "whisper_english") for t in texts])["wer"]

    fp32 = wer(rows["adapter"].fillna(""))
    print(f"data: {len(rows)} test utterances ({seconds / 60:.1f} min) of {name}; adapter {adapter}; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads")
    print(f"{'transformers fp32, merged adapter (the evaluation)':<44} WER {fp32:5.1f}%")
    if "served" in rows:
        print(f"{'served, as the evaluation recorded it':<44} WER {wer(rows['served'].fillna('')):5.1f}% "
              f"({wer(rows['served'].fillna('')) - fp32:+.1f} pts)")
    for variant in args.variants:
        ct2 = dataclasses.replace(configured.ct2, cpu_threads=args.threads, **VARIANTS[variant])
        settings = dataclasses.replace(configured, backend="ctranslate2", ct2=ct2)
        try:
            served = load_transcriber(base, adapter, settings, ct2_cache).served
        except ValueError as error:  # e.g. int16 on a CPU without efficient int16 kernels
            print(f"{variant:<44} not run: {error}")
            continue
        started = time.perf_counter()
        texts = [served.transcribe(audio)["text"] for audio in audios]
        took = time.perf_counter() - started
        same = sum(normalise(t, "whisper_english") == normalise(str(a), "whisper_english")
                   for t, a in zip(texts, rows["adapter"].fillna("")))
        print(f"{variant:<44} WER {wer(texts):5.1f}% ({wer(texts) - fp32:+.1f} pts), {took:6.1f} s "
              f"(RTF {took / seconds:.3f}), {same}/{len(texts)} transcripts equal to fp32's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
