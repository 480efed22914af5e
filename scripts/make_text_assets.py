"""Build the text-tokenizer test assets under tests/data/text/ (run once, commit the result).

Writes:
- ``siglip_test_spiece.model``: a small SentencePiece model of the kind SigLIP uses (unigram,
  ``nmt_nfkc`` normalisation, dummy prefix, T5-style special pieces ``<pad>`` = 0, ``</s>`` = 1,
  ``<unk>`` = 2, no BOS), trained here, seeded and single-threaded, on the text-export corpus
  (``src/imgbeddings/export/text_corpus.json``) plus the generic English below. It is a real
  SentencePiece model, but NOT SigLIP's own 32000-piece vocabulary (no SigLIP vocabulary ships
  on PyPI, and the tests never reach the Hugging Face Hub).
- ``siglip_test_spiece.provenance.json``: the seed, the options and the library versions.
- with ``--clip-wheel PATH``: ``bpe_simple_vocab_16e6.txt.gz`` (CLIP's BPE merges, MIT) copied
  out of an ``open_clip_torch`` wheel (``pip download open_clip_torch --no-deps -d DIR``).

Needs ``pip install sentencepiece``. Usage:
    python scripts/make_text_assets.py [--out tests/data/text] [--clip-wheel DIR/open_clip_torch-*.whl]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "src" / "imgbeddings" / "export" / "text_corpus.json"
SEED = 20261130
VOCAB_SIZE = 768
CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# Generic English (written for this file): captions, descriptions and a little of everything a
# query might hold, so the vocabulary has real subwords, not only the corpus's words.
GENERIC = """
A dog runs across a green field chasing a yellow ball.
Two children build a sandcastle on the beach while their parents watch.
A bowl of fresh fruit sits on a kitchen counter next to a window.
The mountains are covered in snow and the lake below reflects the sky.
A man in a blue jacket is riding a bicycle down a busy street.
A woman is reading a book in a quiet library full of tall shelves.
An old red car is parked in front of a small white house.
A group of friends are laughing around a table at a restaurant.
The city skyline glows with lights after the sun goes down.
A black and white cat sleeps on a soft pillow near the fireplace.
A plate of pasta with tomato sauce, basil and grated cheese.
A train crosses a long bridge over a wide river in the morning fog.
Colorful hot air balloons float above a valley at sunrise.
A close-up photo of a bee collecting pollen from a purple flower.
A chef slices vegetables in a bright, modern kitchen.
Rain falls on a crowded market where people carry umbrellas.
A lighthouse stands on a rocky cliff beside the stormy sea.
A young girl plays the violin on a stage in front of an audience.
Sheep graze on a hillside surrounded by stone walls.
A laptop, a cup of coffee and a notebook on a wooden desk.
An astronaut floats in space with the Earth in the background.
A baseball player swings the bat as the crowd cheers.
A waterfall pours into a clear pool in the middle of a forest.
The museum displays ancient statues and paintings from many countries.
A horse and its rider jump over a fence during a competition.
Fireworks explode over the harbor on New Year's Eve.
A vintage camera lies on a map next to a pair of sunglasses.
A family walks their dog through the park on a sunny afternoon.
A sailboat drifts across calm blue water under a clear sky.
Students sit in rows and listen to a teacher in a classroom.
A black-and-white photograph of an empty street at night.
A drawing of a house, a tree and a smiling sun, made by a child.
A watercolor painting of boats in a harbor.
An illustration of a dragon flying over a castle.
A diagram that shows the parts of a plant cell.
A screenshot of a spreadsheet with numbers and charts.
A sketch of a woman's face in pencil.
A satellite image of a desert with long sand dunes.
A macro shot of water droplets on a spider's web.
A blurry photo of a person running in the rain.
It's a beautiful day; let's go outside and play!
Is this the right way to the station? I think so.
She said, "Don't forget your keys," and then she left.
Prices start at $19.99 (tax not included) - offer ends 31/12/2024.
Call +1 (555) 010-2030 or e-mail info@example.org for details.
The recipe needs 2 cups of flour, 3 eggs and 1/2 cup of milk.
Visit https://www.example.com/photos?page=2&sort=new for more.
Temperatures reach 35°C in July and drop to -5°C in January.
50% off everything: shoes, shirts, hats & bags!
Chapter 1: The Beginning. Chapter 2: The Journey. Chapter 3: The End.
We met at the café near the station and ordered two croissants.
The naïve young man fell for the oldest trick in the book.
His résumé lists jobs in Zürich, Paris, München and São Paulo.
The façade of the cathedral was restored last year.
Crème brûlée is my favourite dessert, après dinner.
Mr. and Mrs. Smith arrived at 8:30 p.m. on Friday.
The U.S.A. and the U.K. signed the agreement in 1998.
Q&A session: who, what, where, when, why and how?
Use the <b> tag for bold text and the <i> tag for italics.
He shouted "Stop!!!" but nobody heard him...
Wait -- is that really true? Yes; no; maybe.
The file is named report_final_v2.pdf and it's 3.5 MB.
The score was 3-2 after extra time.
Seven swans swam swiftly south, singing softly.
Photograph, photographer, photography, photographic, photos.
Running, runner, ran, runs; swimming, swimmer, swam, swims.
Beautiful, beauty, beautifully; happy, happiness, happily.
Quickly, quicker, quickest; slowly, slower, slowest.
Airplane, airport, airline, aircraft, airfield, airship.
Sunflower, sunshine, sunset, sunrise, sunlight, sunglasses.
Waterfall, watermelon, waterproof, watercolor, waterfront.
Blue, red, green, yellow, orange, purple, pink, brown, gray, black, white.
One, two, three, four, five, six, seven, eight, nine, ten, hundred, thousand.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.
January, February, March, April, May, June, July, August, September, October, November, December.
Cat, dog, bird, fish, horse, cow, pig, sheep, goat, rabbit, mouse, lion, tiger, bear, elephant.
Car, bus, truck, train, boat, ship, plane, bicycle, motorcycle, scooter, tram.
Tree, flower, grass, leaf, forest, garden, mountain, river, lake, ocean, island, desert.
Table, chair, sofa, bed, lamp, door, window, wall, floor, ceiling, kitchen, bathroom.
Apple, banana, orange, grape, lemon, cherry, strawberry, peach, pear, mango, pineapple.
Bread, butter, cheese, milk, coffee, tea, water, juice, soup, salad, pizza, burger.
A portrait of an elderly man with a long white beard.
A pair of running shoes on a wooden floor.
A snowy street with parked cars covered in snow.
A red double-decker bus drives past a famous clock tower.
A bowl of ramen with an egg, green onions and slices of pork.
A green parrot perched on a branch in the jungle.
Two zebras standing next to each other in a grassy field.
A giraffe eating leaves from the top of a tall tree.
A kitten playing with a ball of yarn on a carpet.
A surfer riding a large wave in the ocean.
A skateboarder doing a trick on a ramp at the skate park.
A plate with a sandwich, french fries and a pickle.
A bathroom with a white sink, a mirror and a towel.
A bedroom with a large bed and a window overlooking the city.
A living room with a gray sofa, a coffee table and a television.
A stop sign at the corner of a quiet street.
A fire hydrant on the sidewalk next to a parked car.
A clock on a tower showing ten past two.
A teddy bear sitting on a shelf with other toys.
A pizza with pepperoni, mushrooms and olives on a wooden board.
The sign in the window said 中文 and 日本語 in big letters.
"""


def _versions() -> dict[str, str]:
    import sentencepiece

    out = {"python": platform.python_version(), "sentencepiece": sentencepiece.__version__}
    try:
        import google.protobuf

        out["protobuf"] = google.protobuf.__version__
    except ImportError:
        pass
    return out


def training_lines() -> list[str]:
    """The training text, one sentence a line: generic English, then the corpus strings written
    in alphabets below U+3000 (line breaks inside them become spaces, since SentencePiece reads
    lines). The corpus's other strings (Hangul, most CJK, emoji, fullwidth forms) are left out,
    so that the tests also see characters the vocabulary lacks (SentencePiece's ``<unk>``)."""
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    lines = [line.strip() for line in GENERIC.strip().splitlines() if line.strip()]
    for text in corpus:
        flat = " ".join(text.split())
        if flat and all(ord(c) < 0x3000 for c in flat):
            lines.append(flat)
    return lines


def train_siglip_like(out: Path) -> Path:
    """Train the SentencePiece model (module docstring); returns its path."""
    import sentencepiece as spm

    spm.set_random_generator_seed(SEED)
    options = dict(
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        character_coverage=0.9995,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        split_by_whitespace=True,
        byte_fallback=False,
        pad_id=0,
        pad_piece="<pad>",
        eos_id=1,
        eos_piece="</s>",
        unk_id=2,
        unk_piece="<unk>",
        bos_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    lines = training_lines()
    buffer = io.BytesIO()  # in memory, so no temporary path ends up in the model's trainer_spec
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, minloglevel=2, **options
    )
    model = out / "siglip_test_spiece.model"
    model.write_bytes(buffer.getvalue())
    provenance = {
        "file": model.name,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "seed": SEED,
        "training_lines": len(lines),
        "corpus_sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest(),
        "options": options,
        "versions": _versions(),
        "note": "a real SentencePiece model of SigLIP's kind; NOT SigLIP's own vocabulary",
    }
    (out / "siglip_test_spiece.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return model


def copy_clip_bpe(wheel: Path, out: Path) -> Path:
    """Copy ``open_clip/bpe_simple_vocab_16e6.txt.gz`` out of an open_clip_torch wheel."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(f"open_clip/{CLIP_BPE}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != CLIP_BPE_SHA256:
        sys.exit(f"{CLIP_BPE} in {wheel} has sha256 {digest}, expected {CLIP_BPE_SHA256}")
    target = out / CLIP_BPE
    target.write_bytes(data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "text")
    parser.add_argument("--clip-wheel", type=Path, help="an open_clip_torch wheel to copy CLIP's BPE from")
    args = parser.parse_args()
    model = train_siglip_like(args.out)
    print(f"wrote {model} ({model.stat().st_size} bytes)")
    if args.clip_wheel:
        print(f"wrote {copy_clip_bpe(args.clip_wheel, args.out)}")


if __name__ == "__main__":
    main()
