"""Realistic inputs for the model corpus, made from data that ships with installed packages.

Photos from scikit-image and scikit-learn; text drawn with Pillow's built-in font on photo crops (no
system fonts needed); speech-like audio synthesized from a glottal pulse train through formant
resonances, with pauses. Each maker returns the preprocessed arrays the model takes, in its layout.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("EDGE", "int8", "Pi 5", "ONNX", "model 42", "Jetson", "calib", "speed", "fp32 vs", "QDQ", "batch 16", "2026")


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """Real RGB photos (uint8 HxWx3): scikit-image's and scikit-learn's samples."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.cat(), data.immunohistochemistry()]
    return tuple(images + list(load_sample_images().images))


def _crop(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> Image.Image:
    scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.6)
    image = Image.fromarray(photo).resize((int(photo.shape[1] * scale) + 1, int(photo.shape[0] * scale) + 1))
    top, left = rng.integers(0, image.height - height + 1), rng.integers(0, image.width - width + 1)
    return image.crop((left, top, left + width, top + height))


def _draw_text(image: Image.Image, text: str, xy: tuple[int, int], size: int, rng: np.random.Generator) -> None:
    """Dark text on a light band or light text on a dark band, as signs and labels are."""
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    light = rng.random() < 0.5
    draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=(235, 235, 225) if light else (25, 30, 35))
    draw.text(xy, text, font=font, fill=(10, 10, 10) if light else (245, 245, 240))


def paddle_normalize(images: list[Image.Image]) -> np.ndarray:
    """PaddleOCR's preprocessing: RGB scaled to [-1, 1], NCHW float32."""
    array = np.stack([np.asarray(image.convert("RGB"), np.float32) for image in images])
    return np.ascontiguousarray(((array / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def text_lines(count: int, height: int = 48, width: int = 320, seed: int = 0, flip_every: int = 0) -> np.ndarray:
    """Single text lines on photo crops (recognizer and orientation-classifier inputs).

    `flip_every=2` turns every second line upside down, the case the orientation classifier detects.
    """
    rng = np.random.default_rng(seed)
    sources, lines = photos(), []
    for i in range(count):
        image = _crop(sources[i % len(sources)], height, width, rng)
        text = " ".join(rng.choice(WORDS, size=2 if width > 200 else 1))
        _draw_text(image, text, (6, int(height * 0.15)), int(height * 0.6), rng)
        if flip_every and i % flip_every == 1:
            image = image.rotate(180)
        lines.append(image)
    return paddle_normalize(lines)


def text_scenes(count: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """Photo crops with a few text lines drawn at random places and sizes (text-detector inputs)."""
    rng = np.random.default_rng(seed)
    sources, scenes = photos(), []
    for i in range(count):
        image = _crop(sources[i % len(sources)], size, size, rng)
        for _ in range(rng.integers(2, 5)):
            font_size = int(rng.integers(14, 30))
            _draw_text(image, str(rng.choice(WORDS)), (int(rng.integers(4, size // 2)), int(rng.integers(4, size - 2 * font_size))), font_size, rng)
        scenes.append(image)
    return paddle_normalize(scenes)


def letterboxed_photos(count: int, size: int = 640, seed: int = 0) -> np.ndarray:
    """Photos resized into a `size`² grey letterbox, RGB in [0, 1] NCHW (Ultralytics' preprocessing).

    The photos with people are pasted at several scales onto the others, so every image has people in it.
    """
    rng = np.random.default_rng(seed)
    sources = photos()
    people = sources[0]  # the astronaut
    images = []
    for i in range(count):
        canvas = Image.new("RGB", (size, size), (114, 114, 114))
        background = Image.fromarray(sources[i % len(sources)])
        scale = size / max(background.size)
        background = background.resize((int(background.width * scale), int(background.height * scale)))
        canvas.paste(background, (0, (size - background.height) // 2))
        for _ in range(int(rng.integers(1, 3))):
            side = int(rng.integers(size // 5, size // 2))
            person = Image.fromarray(people).resize((side, side))
            canvas.paste(person, (int(rng.integers(0, size - side)), int(rng.integers(0, size - side))))
        images.append(np.asarray(canvas, np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


SAMPLE_RATE = 16_000
VAD_CHUNK = 512  # Silero VAD's window at 16 kHz


def speech_like_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables (glottal pulses at a wandering pitch through three formant resonances) between pauses."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    audio = rng.normal(0, 0.003, total)  # room noise
    position = int(0.3 * SAMPLE_RATE)
    while position < total - SAMPLE_RATE // 4:
        length = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
        pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(np.linspace(0, np.pi, length)))
        phase = np.cumsum(pitch / SAMPLE_RATE)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
        voiced = pulses
        for formant, bandwidth in zip(rng.uniform([500, 1200, 2400], [800, 2000, 3000]), (80, 120, 160)):
            radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
            voiced = lfilter([1.0], [1.0, -2 * radius * np.cos(2 * np.pi * formant / SAMPLE_RATE), radius**2], voiced)
        envelope = np.sin(np.linspace(0, np.pi, length)) ** 0.5
        segment = voiced * envelope
        end = min(total, position + length)
        audio[position:end] += 0.3 * segment[: end - position] / (np.max(np.abs(segment)) + 1e-9)
        position = end + int(rng.uniform(0.05, 0.6) * SAMPLE_RATE)
    return audio.astype(np.float32)


SENTENCES = (
    "The engine runs on the board at the edge of the network.",
    "Calibrate the model on real data, then measure it again.",
    "Seven small devices report their latency every minute.",
)


def speech_audio(seed: int = 0) -> np.ndarray:
    """Spoken sentences (espeak-ng) with pauses and room noise, 16 kHz float32; synthesized
    speech-like sound where espeak-ng is not installed."""
    import shutil
    import subprocess
    import tempfile
    import wave

    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        return speech_like_audio(8.0, seed)
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(0.4 * SAMPLE_RATE), np.float32)]
    with tempfile.TemporaryDirectory() as folder:
        for i, sentence in enumerate(SENTENCES):
            path = f"{folder}/{i}.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", path, sentence], check=True, capture_output=True)
            with wave.open(path) as recording:
                rate, frames = recording.getframerate(), recording.readframes(recording.getnframes())
            speech = np.frombuffer(frames, np.int16).astype(np.float32) / 32768.0
            pieces += [resample_poly(speech, SAMPLE_RATE, rate).astype(np.float32), np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), np.float32)]
    audio = np.concatenate(pieces)
    return (audio + rng.normal(0, 0.003, len(audio))).astype(np.float32)


VAD_CONTEXT = 64  # Silero VAD v5 sees each window with the 64 samples before it


def audio_chunks(audio: np.ndarray) -> np.ndarray:
    """Consecutive VAD windows with their context, [T, 64 + 512], as Silero's own wrapper feeds them."""
    padded = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), audio])
    count = len(audio) // VAD_CHUNK
    return np.ascontiguousarray(np.stack([padded[i * VAD_CHUNK : (i + 1) * VAD_CHUNK + VAD_CONTEXT] for i in range(count)]))


def vad_stream_inputs(model_path, audio: np.ndarray, every: int = 1) -> dict[str, np.ndarray]:
    """Silero VAD inputs at batch N as the model takes them: windows [N, 576], the recurrent state each
    window met while streaming the audio [2, N, 128] (batch on axis 1), and the 0-d int64 sample rate."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    windows, states, state = audio_chunks(audio), [], np.zeros((2, 1, 128), np.float32)
    rate = np.array(SAMPLE_RATE, np.int64)
    for window in windows:
        states.append(state[:, 0])
        _, state = session.run(None, {"input": window[None], "state": state, "sr": rate})
    keep = slice(None, None, every)
    return {"input": windows[keep], "state": np.ascontiguousarray(np.stack(states, axis=1)[:, keep]), "sr": rate}


def stream_vad(model_path, audio: np.ndarray, simulated: bool = False) -> np.ndarray:
    """Speech probability per window when the model streams the audio carrying its own state
    (`simulated`: a QDQ model's Q/DQ computed in float, as an ARM device's int8 computes it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if simulated:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    state, probabilities = np.zeros((2, 1, 128), np.float32), []
    for window in audio_chunks(audio):
        probability, state = session.run(None, {"input": window[None], "state": state, "sr": np.array(SAMPLE_RATE, np.int64)})
        probabilities.append(float(probability[0, 0]))
    return np.array(probabilities)
