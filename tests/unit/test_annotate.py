"""annotate(): a raw model answer becomes the text a user reads and the pictures with boxes."""

import io

from PIL import Image

from qvl.protocol import BoxesPart, ImagePart, TextPart
from worker.engines.base import ChatTurn
from worker.engines.echo import EchoEngine, asked_for
from worker.pipeline import annotate


class Model:
    """A stand-in engine: sees every picture at half its size (for absolute JSON boxes)."""

    def __init__(self, family):
        self.family = family

    def input_size(self, width, height):
        return width // 2, height // 2


class Store:
    def __init__(self):
        self.saved = []

    def __call__(self, data, size):
        self.saved.append((Image.open(io.BytesIO(data)), size))
        return f"drawn{len(self.saved)}"


FIRST, LATEST = "1" * 64, "2" * 64
IMAGES = {FIRST: Image.new("RGB", (800, 600), "white"), LATEST: Image.new("RGB", (1000, 500), "white")}
QWEN2 = ("Here is <|object_ref_start|>the dog<|object_ref_end|>"
         "<|box_start|>(100,200),(400,900)<|box_end|>.")
QWEN25 = 'Here it is:\n```json\n[{"bbox_2d": [50, 25, 200, 225], "label": "the dog"}]\n```'


def run(raw, family, pictures=(FIRST, LATEST)):
    store = Store()
    return annotate(raw, Model(family), pictures=list(pictures), images=IMAGES, store=store), store


def test_qwen2_vl_boxes_are_drawn_on_the_latest_picture():
    parts, store = run(QWEN2, "qwen2-vl")
    assert parts[0] == TextPart("Here is the dog.", raw=QWEN2)
    assert parts[1] == BoxesPart(LATEST, parts[1].boxes)
    assert [(b.label, b.box) for b in parts[1].boxes] == [("the dog", (100, 100, 400, 450))]
    assert parts[2] == ImagePart("drawn1", annotated=True)
    assert len(parts) == 3
    [(jpeg, size)] = store.saved
    assert jpeg.format == "JPEG" and jpeg.size == size == (1000, 500)


def test_qwen25_vl_json_boxes_are_scaled_from_what_the_model_saw():
    parts, store = run(QWEN25, "qwen2.5-vl")
    assert parts[0] == TextPart("Here it is:\nthe dog", raw=QWEN25)
    assert parts[1].image == LATEST
    assert [(b.label, b.box) for b in parts[1].boxes] == [("the dog", (100, 50, 400, 450))]
    assert parts[2].annotated and store.saved[0][0].size == (1000, 500)


def test_an_answer_naming_a_picture_draws_on_that_one():
    raw = "In Picture 1 <|object_ref_start|>a cat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>"
    parts, store = run(raw, "qwen2-vl")
    assert parts[1].image == FIRST
    assert parts[1].boxes[0].box == (0, 0, 400, 300)
    assert parts[1].boxes[0].picture == 1
    assert store.saved[0][0].size == (800, 600)


def test_an_answer_without_boxes_is_only_text():
    parts, store = run("A dog on a sofa.", "qwen2-vl")
    assert parts == [TextPart("A dog on a sofa.", raw="A dog on a sofa.")]
    assert store.saved == []
    parts, _ = run(QWEN2, "qwen2-vl", pictures=())  # boxes but no picture to draw on
    assert [type(p) for p in parts] == [TextPart]


def test_no_space_is_inserted_next_to_chinese_labels():
    raw = "<ref>上海环球金融中心</ref><box>(1,2),(3,4)</box>和<ref>东方明珠</ref><box>(5,6),(7,8)</box>"
    parts, _ = run(raw, "qwen-vl", pictures=())
    assert parts[0].text == "上海环球金融中心和东方明珠"
    raw = "<ref>a</ref><box>(1,2),(3,4)</box><ref>b</ref><box>(5,6),(7,8)</box>"
    parts, _ = run(raw, "qwen-vl", pictures=())
    assert parts[0].text == "a b"


def test_echo_engine_labels_its_box_with_what_was_asked():
    assert asked_for("box the dog") == "dog"
    assert asked_for("hello") == "object"
    engine = EchoEngine("qwen2-vl")
    picture = IMAGES[LATEST]
    raw = engine.generate([ChatTurn("user", "box the dog", (picture,))], max_new_tokens=64)
    store = Store()
    parts = annotate(raw, engine, pictures=[LATEST], images=IMAGES, store=store)
    boxes = [p for p in parts if isinstance(p, BoxesPart)]
    assert [b.label for b in boxes[0].boxes] == ["dog"]
    assert boxes[0].boxes[0].box == (250, 125, 750, 375)  # the middle of the picture
    assert store.saved[0][0].size == (1000, 500)
