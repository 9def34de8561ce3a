"""Property-based: no string makes the parser raise, boxes stay inside, round trips are stable."""

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.grounding import FAMILIES, RawBox, ground, parse
from worker.grounding.render import render

MARKUP = ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<|object_ref_start|>",
          "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
          "(", ")", ",", "```json\n", "```", '"bbox_2d"', "[", "]", "{", "}", ":", '"label"',
          "Picture 2", "1000", "-5", "99999999999999999999", " ", "击掌", "1e400"]
messy = st.lists(st.one_of(st.sampled_from(MARKUP), st.text(max_size=6)), max_size=40).map("".join)
families = st.sampled_from(FAMILIES)
sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(), messy), family=families, size=sizes)
def test_never_raises_and_every_box_is_inside_the_picture(text, family, size):
    g = ground(text, family, size=size)
    assert isinstance(g.text, str)
    for b in g.boxes:
        x1, y1, x2, y2 = b.box
        assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
    if parse(text, family).markup:
        assert g.boxes or g.skipped  # never zero boxes silently


label = st.text(st.characters(blacklist_characters='<>"\'“”‘’「」『』\\', blacklist_categories=("Cs", "Cc")),
                min_size=1, max_size=8).map(str.strip).filter(bool)
coord = st.integers(0, 1000)
raw_boxes = st.lists(st.builds(lambda lb, a, b, c, d: RawBox(lb, (min(a, c), min(b, d), max(a, c), max(b, d))),
                               st.one_of(st.none(), label), coord, coord, coord, coord), max_size=6)


@settings(max_examples=300, deadline=None)
@given(boxes=raw_boxes, family=families)
def test_parse_render_parse_is_stable(boxes, family):
    first = parse(render(boxes, family), family)
    second = parse(render(first.boxes, family), family)
    assert second.boxes == first.boxes
    assert [b.coords for b in first.boxes] == [tuple(float(v) for v in b.coords) for b in boxes]
