"""Error reasons grouped by kind, with a bounded number of kinds whatever the number of images."""

from labeler.outdir.error_tally import MAX_KINDS, OTHER_KINDS, ErrorTally, error_kind


def test_what_belongs_to_one_image_is_taken_out_of_its_kind():
    assert error_kind("read failed: no such file: /data/a/17.jpg", "/data/a/17.jpg") == "read failed: no such file: …"
    assert error_kind("read failed: s3://b/x.jpg: 403", "s3://b/x.jpg") == "read failed: …: N"
    assert error_kind("read failed: /d/x.jpg gone", "file:///d/x.jpg") == "read failed: … gone"
    assert error_kind("decode failed: cannot identify image file '/x/1.png'", "/y") == \
        "decode failed: cannot identify image file …"
    assert error_kind("read failed: timed out after 300 s", "/a") == "read failed: timed out after N s"
    assert error_kind("SAM2 failed: OutOfMemoryError: tried 2.50 GiB at 0x7f3a", "/a") == \
        "SAMN failed: OutOfMemoryError: tried N GiB at N"


def test_a_tally_keeps_at_most_max_kinds_and_counts_the_rest():
    tally = ErrorTally()
    for k in range(MAX_KINDS + 10):
        tally.record(f"kind {chr(65 + k % 26)}{k // 26}", 1, f"/img/{k}", "reason")
    assert len(tally.kinds) == MAX_KINDS and tally.errors == MAX_KINDS + 10
    assert tally.kinds[OTHER_KINDS].count == 11  # the kind that took the last place, then ten more
    again = ErrorTally.from_json(tally.to_json())
    assert again.to_json() == tally.to_json()
    again.add(tally, -1)
    assert again.kinds == {}
