"""Boxes from all four Qwen generations, checked against hand-computed pixels."""

import pytest

from worker.grounding import ground, parse, smart_resize

APPLES = ("<ref> Two apples</ref><box>(302,257),(582,671)</box><box>(603,252),(878,642)</box>"
          " and<ref> a bowl</ref><box>(2,269),(304,674)</box>")


def test_qwen_vl_cleaned_text_and_boxes_on_a_1000_square():
    g = ground(APPLES, "qwen-vl", size=(1000, 1000))
    assert g.text == "Two apples and a bowl"
    assert [(b.label, b.box) for b in g.boxes] == [
        ("Two apples", (302, 257, 582, 671)),
        ("Two apples", (603, 252, 878, 642)),
        ("a bowl", (2, 269, 304, 674)),
    ]
    assert g.skipped == ()


def test_the_model_cards_own_example_on_its_2048x1365_picture():
    g = ground('<ref>"击掌"</ref><box>(211,412),(577,891)</box>', "qwen-vl", size=(2048, 1365))
    # int(211/1000*2048)=432, int(412/1000*1365)=562, int(577*2.048)=1181, int(891*1.365)=1216
    assert [(b.label, b.box) for b in g.boxes] == [("击掌", (432, 562, 1181, 1216))]
    assert g.text == '"击掌"'


def test_qwen_vl_box_without_ref_and_quad():
    g = ground("look <box>(100,100),(200,300)</box> and <ref>sign</ref>"
               "<quad>(500,100),(900,150),(880,400),(520,380)</quad>", "qwen-vl", size=(2000, 1000))
    assert [(b.label, b.box) for b in g.boxes] == [
        (None, (200, 100, 400, 300)),
        ("sign", (1000, 100, 1800, 400)),
    ]
    assert g.text == "look and sign"


def test_qwen2_vl_special_token_format():
    text = ("<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(100,200),(400,900)<|box_end|>"
            " is sitting")
    g = ground(text, "qwen2-vl", size=(640, 480))
    assert g.text == "the dog is sitting"
    assert [(b.label, b.box) for b in g.boxes] == [("the dog", (64, 96, 256, 432))]


def test_qwen25_vl_absolute_pixels_of_the_resized_input_map_back():
    # 1000x500 → smart_resize → 1008x504: x * 1000/1008, y * 500/504
    assert smart_resize(1000, 500) == (1008, 504)
    text = 'Here you go:\n```json\n[{"bbox_2d": [504, 252, 1008, 504], "label": "cat"}]\n```'
    g = ground(text, "qwen2.5-vl", size=(1000, 500))
    assert [(b.label, b.box) for b in g.boxes] == [("cat", (500, 250, 1000, 500))]
    assert g.text == "Here you go:\ncat"


def test_qwen25_vl_explicit_input_size():
    g = ground('[{"bbox_2d": [10, 20, 30, 40]}]', "qwen2.5-vl", size=(200, 400), input_size=(100, 100))
    assert [b.box for b in g.boxes] == [(20, 80, 60, 160)]


def test_smart_resize_follows_the_processor_rule_for_huge_and_tiny_pictures():
    w, h = smart_resize(8000, 6000)
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 12_845_056
    assert abs(w / h - 8000 / 6000) < 0.02
    assert smart_resize(10, 10) == (56, 56)


def test_qwen3_vl_json_in_thousandths_with_trailing_text():
    text = '[{"bbox_2d": [100, 200, 300, 400], "label": "狗"}] 以上是狗的位置。'
    g = ground(text, "qwen3-vl", size=(1000, 500))
    assert [(b.label, b.box) for b in g.boxes] == [("狗", (100, 100, 300, 200))]
    assert g.text == "狗 以上是狗的位置。"


def test_coordinates_above_1000_and_reversed_corners_are_clamped_and_ordered():
    g = ground("<ref>x</ref><box>(900,800),(1200,100)</box>", "qwen-vl", size=(100, 100))
    assert [b.box for b in g.boxes] == [(90, 10, 100, 80)]


def test_truncated_markup_at_the_end_of_a_stream():
    g = ground("<ref>dog</ref><box>(10,20),(30", "qwen-vl", size=(100, 100))
    assert g.boxes == () and g.text == "dog"
    assert any("truncated" in s for s in g.skipped)
    assert ground("a dog <|box_st", "qwen2-vl", size=(9, 9)).text == "a dog"
    cut = ground('Sure ```json\n[{"bbox_2d": [1, 2, 3', "qwen3-vl", size=(9, 9))
    assert cut.text == "Sure" and cut.skipped


def test_markup_without_boxes_is_never_silent():
    for text, family in [("<ref>dog</ref>", "qwen-vl"), ("<box>(1,2)</box>", "qwen-vl"),
                         ('[{"bbox_2d": [1, 2]}]', "qwen3-vl"),
                         ("<box>(5,5),(5,9)</box>", "qwen-vl")]:
        g = ground(text, family, size=(1000, 1000))
        assert g.boxes == () and g.skipped, text


def test_no_markup_means_no_boxes_and_no_complaints():
    g = ground("Just a beach with a dog. [1, 2] {x}", "qwen3-vl", size=(10, 10))
    assert g.boxes == () and g.skipped == () and g.text == "Just a beach with a dog. [1, 2] {x}"


def test_several_pictures_named_in_one_answer():
    text = ("Picture 1: <ref>cat</ref><box>(0,0),(500,500)</box>; "
            "Picture 2: <ref>dog</ref><box>(500,500),(1000,1000)</box>")
    assert [b.picture for b in parse(text, "qwen-vl").boxes] == [1, 2]
    assert [b.picture for b in parse("图2中<ref>狗</ref><box>(1,1),(9,9)</box>", "qwen-vl").boxes] == [2]


@pytest.mark.parametrize("family", ["qwen-vl", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_json_output_shape(family):
    g = ground("<ref>a</ref><box>(1,1),(2000,3)</box>", family, size=(10, 10)).as_json()
    assert set(g) <= {"text", "boxes", "skipped"}
