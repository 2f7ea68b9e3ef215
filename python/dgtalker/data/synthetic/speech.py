"""Speech for the synthetic corpus: espeak-ng reads sentences, with pauses between.

espeak-ng (Debian package ``espeak-ng``) is run as a command, one sentence at a time;
its output is a 22050 Hz mono wav. Sentences are drawn (seeded) from
``SENTENCES`` or from a list the caller gives.
"""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np

SPEECH_RATE = 22050

# Written for this corpus: everyday statements with a broad mix of vowels (open,
# rounded, spread), bilabials (p b m), labiodentals (f v) and fricatives.
SENTENCES = (
    "The morning train was late again, so we walked along the river instead.",
    "Please bring me a bowl of warm soup and a piece of brown bread.",
    "My brother moved to a small town by the sea last summer.",
    "Few people know how the old bridge was built without modern tools.",
    "We should meet at noon, before the museum gets too crowded.",
    "She painted the window frames blue and the door a bright yellow.",
    "Could you check whether the shop is open on Sunday?",
    "The wind blew through the trees and shook the loose boards of the barn.",
    "I think the weather will improve by the end of the week.",
    "Maybe we can book a table for five at the place on Main Street.",
    "Put the boxes by the back door, and I will move them tomorrow.",
    "The cat sat quietly on the wall, watching the birds in the garden.",
    "Every evening he plays the piano for an hour before dinner.",
    "A cool breeze came off the water as the boat pulled away from the pier.",
    "Thank you for waiting; the doctor will see you in a few minutes.",
    "Our team won the final match by a single point.",
    "Remember to switch off the lights when you leave the office.",
    "The map shows a path that winds up the hill to an old mill.",
    "Fresh fruit, fish and vegetables are sold at the market every Friday.",
    "Who knows what the future will bring to this quiet village?",
    "He pushed open the heavy wooden gate and stepped into the yard.",
    "It was a bright, cold day in April, and the clocks were striking nine.",
    "Mobile phones have changed the way we find our way in a new city.",
    "We need more paper, a blue pen and a box of paper clips.",
    "The room smelled of coffee, old books and freshly cut flowers.",
    "Be careful, the floor by the pool is wet and very slippery.",
    "Over the years the village grew into a busy market town.",
    "Why would anyone leave a perfectly good umbrella on the bus?",
    "The choir sang softly while the crowd moved slowly toward the exit.",
    "Please move your car; it is blocking the way to the main building.",
    "Many families spend their holidays by the lake in the mountains.",
    "The museum opens at ten and closes at six in the evening.",
    "I would love a cup of tea with milk and a little honey.",
    "Beneath the old oak tree we found a box full of letters.",
    "Do you remember the name of the film we saw in June?",
    "The pilot announced that we would land in twenty minutes.",
    "Vivid purple flowers bloomed beside the path to the front porch.",
    "Numbers on the board showed that sales rose by seven percent.",
    "We stopped for lunch in a tiny cafe with a view of the harbour.",
    "Soon the snow will melt, and the fields will turn green again.",
    "The phone rang twice, then the house fell silent once more.",
    "Always wash your hands before you prepare any food.",
    "My favourite season is autumn, when the leaves turn gold and red.",
    "The baby woke up at five and would not go back to sleep.",
    "Of all the rooms in the house, the kitchen is the warmest.",
    "Ask the man at the ticket office which platform we need.",
    "Bubbles rose from the bottom of the pot as the water began to boil.",
    "You can see the whole city from the top of that tower.",
)


class SpeechError(RuntimeError):
    pass


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", speed: int = 165, pitch: int = 50) -> np.ndarray:
    """One utterance as float32 samples at ``SPEECH_RATE``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechError("espeak-ng is not installed (Debian package espeak-ng); "
                          "install it, or drive the generator with --audio FILE")
    res = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", text],
                         capture_output=True)
    if res.returncode != 0 or len(res.stdout) < 100:
        raise SpeechError(f"espeak-ng failed for voice {voice!r}: {res.stderr.decode(errors='replace').strip()}")
    import soundfile as sf

    data, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    if data.ndim == 2:
        data = data.mean(axis=1)
    if sr != SPEECH_RATE:
        from ...audio import resample

        data = resample(data, sr, SPEECH_RATE)
    return data


def speak_for(seconds: float, rng: np.random.Generator, voice: dict, sentences=None,
              progress=None) -> tuple[np.ndarray, list[dict]]:
    """About ``seconds`` of speech: sentences in a seeded order with pauses between
    (0.25-0.9 s, and now and then a 1.5-2.5 s silence). Returns (samples at
    SPEECH_RATE, exactly ``seconds`` long; transcript [{"text", "start", "end"}])."""
    pool = list(SENTENCES if sentences is None else sentences)
    if not pool:
        raise ValueError("sentences must not be empty")
    total = int(round(seconds * SPEECH_RATE))
    pieces, script = [], []
    t = int(rng.uniform(0.2, 0.6) * SPEECH_RATE)  # a short silence before the first word
    pieces.append(np.zeros(t, np.float32))
    order = rng.permutation(len(pool))
    k = 0
    while t < total:
        text = pool[order[k % len(pool)]]
        k += 1
        if k % len(pool) == 0:
            order = rng.permutation(len(pool))
        wav = synthesize(text, voice["voice"], voice["speed"], voice["pitch"])
        nz = np.nonzero(np.abs(wav) > 1e-3)[0]  # espeak pads with silence; trim it
        if nz.size:
            wav = wav[nz[0]: nz[-1] + 1]
        script.append({"text": text, "start": t / SPEECH_RATE, "end": min(t + len(wav), total) / SPEECH_RATE})
        pieces.append(wav)
        t += len(wav)
        pause = rng.uniform(1.5, 2.5) if rng.uniform() < 0.15 else rng.uniform(0.25, 0.9)
        gap = int(pause * SPEECH_RATE)
        pieces.append(np.zeros(gap, np.float32))
        t += gap
        if progress is not None:
            progress(min(t, total) / SPEECH_RATE)
    out = np.concatenate(pieces)[:total]
    out = np.pad(out, (0, total - len(out)))
    peak = np.max(np.abs(out))
    if peak > 0:
        out = out * (0.7 / peak)
    return out.astype(np.float32), script
