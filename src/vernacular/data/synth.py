"""Speech synthesis with espeak-ng (the library shipped by the `espeakng-loader` wheel).

espeak-ng keeps synthesis state in C globals that survive from one utterance to the next
(a pitch-flutter phase, an automatic gain, the Klatt noise state), so two calls with the same
arguments in one process give different samples. To make output a pure function of its
arguments, a small stdlib-only helper process initialises the library once and forks a fresh
child for every request: each utterance starts from the same post-initialisation state.
The helper is started lazily, once per process, under a lock; requests are serialised.
"""

from __future__ import annotations

import atexit
import inspect
import json
import numbers
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile as sf

from vernacular.common.fileio import sha256_file
from vernacular.data.audio import TARGET_SAMPLE_RATE as SAMPLE_RATE
from vernacular.data.audio import resample
from vernacular.data.audio import write_wav as _write_wav

RATE_RANGE = (80, 450)  # words per minute
PITCH_RANGE = (0, 99)
MARGIN_S = 0.15  # silence kept (or padded) before and after the speech
_SILENCE_DB = -40.0  # samples quieter than this relative to the peak count as silence
_EXAMPLE_VOICES = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbcwmd")


def _worker_main() -> None:
    """Run the espeak-ng helper: initialise once, then fork one child per request.

    Protocol on stdin: one JSON request per line. On stdout: one JSON header line per
    reply, followed by `header["bytes"]` raw bytes (native-endian int16 PCM for "synth").
    This function runs in its own interpreter (its source is passed with `python -c`),
    so it uses the standard library only and no module globals.
    """
    import ctypes
    import json
    import os
    import sys
    import traceback

    lib_path, data_path = sys.argv[1], sys.argv[2]
    # Keep a private handle on the real stdout and point fd 1 at stderr, so that anything
    # the C library prints cannot corrupt the protocol.
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(stream, header, payload=b""):
        header = dict(header, bytes=len(payload))
        stream.write(json.dumps(header).encode() + b"\n" + payload)
        stream.flush()

    lib = ctypes.CDLL(lib_path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.c_void_p)

    class Voice(ctypes.Structure):  # espeak_VOICE
        _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
                    ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
                    ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
                    ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]

    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(Voice)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(Voice))

    # AUDIO_OUTPUT_SYNCHRONOUS = 2; espeakINITIALIZE_DONT_EXIT = 0x8000 (report, don't exit()).
    sample_rate = lib.espeak_Initialize(2, 0, data_path.encode(), 0x8000)
    if sample_rate <= 0:
        send(proto, {"error": f"espeak_Initialize({data_path!r}) failed with {sample_rate}"})
        return

    def synth(req):
        voice = req["voice"]
        code = lib.espeak_SetVoiceByName(voice.encode())
        if code != 0:
            return {"error": f"espeak_SetVoiceByName({voice!r}) returned {code}", "kind": "voice"}, b""
        for param, name in ((1, "rate"), (3, "pitch")):  # espeakRATE, espeakPITCH
            code = lib.espeak_SetParameter(param, int(req[name]), 0)
            if code != 0:
                return {"error": f"espeak_SetParameter({name}={req[name]}) returned {code}"}, b""
        chunks = []

        @callback_type
        def collect(wav, numsamples, events):
            if wav and numsamples > 0:
                chunks.append(ctypes.string_at(wav, 2 * numsamples))
            return 0

        lib.espeak_SetSynthCallback(collect)
        text = req["text"].encode("utf-8")
        buffer = ctypes.create_string_buffer(text)
        # POS_CHARACTER = 1, espeakCHARS_UTF8 = 1
        code = lib.espeak_Synth(buffer, len(text) + 1, 0, 1, 0, 1, None, None)
        if code != 0:
            return {"error": f"espeak_Synth returned {code}"}, b""
        lib.espeak_Synchronize()
        return {"sample_rate": sample_rate}, b"".join(chunks)

    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]

    def phonemes(req):
        voice = req["voice"]
        code = lib.espeak_SetVoiceByName(voice.encode())
        if code != 0:
            return {"error": f"espeak_SetVoiceByName({voice!r}) returned {code}", "kind": "voice"}, b""
        buffer = ctypes.create_string_buffer(req["text"].encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value:  # one clause per call; the pointer moves on (NULL at the end)
            # espeakCHARS_UTF8 = 1; phonememode 0x02: IPA as UTF-8
            clause = lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, 0x02)
            if clause:
                clauses.append(clause.decode("utf-8", "replace"))
        return {}, json.dumps(clauses).encode()

    def list_voices(spec):
        found = []
        voices = lib.espeak_ListVoices(spec)
        index = 0
        while voices[index]:
            voice = voices[index].contents
            languages, address = [], voice.languages
            # languages: (priority byte, NUL-terminated name) pairs, ended by a 0 priority
            while address and ctypes.c_ubyte.from_address(address).value:
                name = ctypes.string_at(address + 1)
                languages.append(name.decode("utf-8", "replace"))
                address += len(name) + 2
            found.append({"name": (voice.name or b"").decode("utf-8", "replace"),
                          "identifier": (voice.identifier or b"").decode("utf-8", "replace"),
                          "languages": languages})
            index += 1
        return found

    def voices(req):
        spec = Voice()
        spec.languages = ctypes.cast(ctypes.c_char_p(b"variant"), ctypes.c_void_p)
        return {"voices": list_voices(None), "variants": list_voices(ctypes.byref(spec))}, b""

    handlers = {"synth": synth, "voices": voices, "phonemes": phonemes}
    send(proto, {"ready": True, "sample_rate": sample_rate})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read_fd)
                header, payload = handlers[request["op"]](request)
                with os.fdopen(write_fd, "wb") as out:
                    send(out, header, payload)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            reply = pipe.read()
        _, wait_status = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wait_status)
        if status != 0 or not reply:
            send(proto, {"error": f"espeak child process failed (exit status {status})"})
        else:
            proto.write(reply)
            proto.flush()


class _Worker:
    """Client side of the helper process started by `_worker_main`."""

    def __init__(self) -> None:
        source = textwrap.dedent(inspect.getsource(_worker_main)) + "\n_worker_main()\n"
        command = [sys.executable, "-I", "-c", source,
                   espeakng_loader.get_library_path(), espeakng_loader.get_data_path()]
        self.owner_pid = os.getpid()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        header, _ = self._read()
        if "error" in header:
            self.close()
            raise RuntimeError(f"espeak-ng could not start: {header['error']}")
        self.sample_rate = int(header["sample_rate"])

    def _read(self) -> tuple[dict, bytes]:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.poll()
            raise RuntimeError(f"espeak-ng helper process exited unexpectedly (exit code {code})")
        header = json.loads(line)
        size = int(header.get("bytes", 0))
        payload = self.process.stdout.read(size) if size else b""
        if len(payload) != size:
            raise RuntimeError("espeak-ng helper process sent a truncated reply")
        return header, payload

    def request(self, **request) -> tuple[dict, bytes]:
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


_lock = threading.Lock()
_worker: _Worker | None = None
_catalogue: dict | None = None


def _reset_after_fork() -> None:
    # A forked child must not share the parent's helper pipes, nor inherit a held lock.
    global _lock, _worker
    _lock = threading.Lock()
    _worker = None


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _shutdown() -> None:
    # No lock here: a daemon thread may still hold it at interpreter exit.
    worker = _worker
    if worker is not None and worker.owner_pid == os.getpid():
        try:
            worker.close()
        except OSError:
            pass


def _request(**request) -> tuple[dict, bytes]:
    """Send one request to the helper, starting it on first use; serialised by `_lock`."""
    global _worker
    with _lock:
        for attempt in (1, 2):
            fresh = _worker is None or _worker.owner_pid != os.getpid()
            if fresh:
                _worker = _Worker()
            try:
                return _worker.request(**request)
            except (OSError, ValueError, RuntimeError):
                # The helper died or the stream is out of step: drop it, and retry once
                # with a new helper unless this one was just started.
                worker, _worker = _worker, None
                try:
                    worker.close()
                except OSError:
                    pass
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _voice_catalogue() -> dict:
    global _catalogue
    if _catalogue is None:
        header, _ = _request(op="voices")
        if "error" in header:
            raise RuntimeError(f"espeak-ng could not list voices: {header['error']}")
        bases: set[str] = set()
        for voice in header["voices"]:
            if voice["languages"]:
                bases.add(voice["languages"][0].lower())
            bases.add(voice["identifier"].rsplit("/", 1)[-1].lower())
        variants = {v["identifier"].rsplit("/", 1)[-1] for v in header["variants"]}
        _catalogue = {"bases": frozenset(bases), "variants": frozenset(variants)}
    return _catalogue


def list_voices() -> list[str]:
    """Base voice names espeak-ng accepts (primary language codes and voice file names)."""
    return sorted(_voice_catalogue()["bases"])


def list_variants() -> list[str]:
    """Voice variants that can be appended as `+name` (e.g. m1..m8, f1..f5, klatt)."""
    return sorted(_voice_catalogue()["variants"], key=str.lower)


def validate_voice(voice: str) -> str:
    """Return `voice` if espeak-ng has it (`base` or `base+variant`), else raise ValueError."""
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"voice must be a non-empty string like 'en-us' or 'en-029+f2', got {voice!r}")
    catalogue = _voice_catalogue()
    base, plus, variant = voice.partition("+")
    if base.lower() not in catalogue["bases"]:
        raise ValueError(
            f"unknown espeak-ng voice {base!r} in {voice!r}; valid voices include "
            f"{', '.join(_EXAMPLE_VOICES)} (list_voices() has all {len(catalogue['bases'])})")
    # espeak-ng silently ignores an unknown variant, so it is checked here.
    if plus and variant not in catalogue["variants"]:
        raise ValueError(
            f"unknown espeak-ng voice variant {variant!r} in {voice!r}; use one '+variant' "
            f"such as m1..m7 or f1..f5 (list_variants() has all {len(catalogue['variants'])})")
    return voice


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return int(value)


def _check_request(text: str, voice: str, rate: int, pitch: int) -> tuple[int, int]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text to synthesise must be a non-empty string, got {text!r}")
    if "\x00" in text:
        raise ValueError("text to synthesise must not contain NUL characters")
    validate_voice(voice)
    return _check_int("rate", rate, *RATE_RANGE), _check_int("pitch", pitch, *PITCH_RANGE)


def _normalise_margins(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Trim or zero-pad so exactly MARGIN_S of audio surrounds the speech on each side."""
    margin = int(round(MARGIN_S * sample_rate))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return np.zeros(2 * margin, dtype=np.float32)
    loud = np.flatnonzero(np.abs(audio) > peak * 10 ** (_SILENCE_DB / 20))
    first, last = int(loud[0]), int(loud[-1]) + 1
    start, end = max(0, first - margin), min(audio.size, last + margin)
    return np.pad(audio[start:end], (margin - (first - start), margin - (end - last)))


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak `text` with an espeak-ng voice; float32 mono in [-1, 1] at SAMPLE_RATE.

    `voice` is a base voice (`list_voices()`) with an optional `+variant`, `rate` is in
    words per minute (80..450), `pitch` 0..99. The same arguments give bit-identical audio.
    Text is spoken as written (no normalisation of numbers or symbols).
    """
    rate, pitch = _check_request(text, voice, rate, pitch)
    header, payload = _request(op="synth", text=text, voice=voice, rate=rate, pitch=pitch)
    if "error" in header:
        if header.get("kind") == "voice":
            raise ValueError(f"espeak-ng rejected voice {voice!r}: {header['error']}")
        raise RuntimeError(f"espeak-ng failed on {text[:60]!r}: {header['error']}")
    pcm = np.frombuffer(payload, dtype=np.int16).astype(np.float32) / 32768.0
    audio = resample(pcm, int(header["sample_rate"]), SAMPLE_RATE) if pcm.size else pcm
    audio = _normalise_margins(audio, SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """The IPA pronunciation of `text` in espeak-ng's `voice` (its accent), one string per clause
    (punctuation ends a clause and is not kept)."""
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise ValueError(f"text to phonemize must be a non-empty string without NUL, got {text!r}")
    validate_voice(voice)
    header, payload = _request(op="phonemes", text=text, voice=voice)
    if "error" in header:
        raise RuntimeError(f"espeak-ng could not phonemize {text[:60]!r}: {header['error']}")
    return [c.strip() for c in json.loads(payload) if c.strip()]


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write 16-bit PCM WAV atomically (temp file in the same folder, then os.replace)."""
    return _write_wav(path, audio, sample_rate)


def _wav_duration(path: Path) -> float | None:
    """Duration of a readable mono SAMPLE_RATE WAV with samples, else None."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.format != "WAV" or info.frames <= 0 or info.channels != 1 or info.samplerate != SAMPLE_RATE:
        return None
    return info.frames / info.samplerate


def render(text: str, voice: str, rate: int, pitch: int, path: str | os.PathLike) -> dict:
    """Synthesise `text` to a WAV at `path` unless a valid WAV is already there.

    Returns {"path", "duration" (seconds), "sha256" (of the file)}. The cache is keyed by
    path only: callers encode text/voice/rate/pitch in the path.
    """
    _check_request(text, voice, rate, pitch)  # a bad config fails even when cached
    return render_cached(path, lambda: synthesize(text, voice=voice, rate=rate, pitch=pitch))


def render_cached(path: str | os.PathLike, make_audio) -> dict:
    """Write `make_audio()` (float32 mono at SAMPLE_RATE) to `path` unless a valid WAV is there;
    {"path", "duration", "sha256"}. Any synthesiser's cache: the caller keys the path."""
    path = Path(path)
    duration = _wav_duration(path) if path.is_file() else None
    if duration is None:
        write_wav(path, make_audio(), SAMPLE_RATE)
        duration = _wav_duration(path)
        if duration is None:
            raise RuntimeError(f"{path}: the WAV just written cannot be read back")
    return {"path": str(path), "duration": duration, "sha256": sha256_file(path)}
