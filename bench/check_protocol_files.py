"""Read the benchmarks' published annotation files with our readers and print what each protocol gets.

Not a test (the files are not in the repository; fetch them as a user would): for each file given,
the clips it lists, the protocol it defines, N, and a check that every clip's query is the list's
own sentence. Exits 1 when a check fails.

    python bench/check_protocol_files.py --youcook2-list validation_youcook.csv \
        --jsfusion MSRVTT_JSFUSION_test.csv \
        [--msrvtt train_val_videodatainfo.json test_videodatainfo.json] [--nine-k MSRVTT_train.9k.csv] \
        [--youcook2-json youcookii_annotations_trainval.json]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from howto_prep.extract.annotations import ClipList, load_clips_csv, load_msrvtt, load_youcook2, read_video_list
from howto_prep.extract.protocols import choose_protocol, describe, protocol_record


def row(name: str, clips: ClipList, check: bool) -> bool:
    protocol = choose_protocol(clips)
    videos = len({clip.video_id for clip in clips})
    print(f"{name:<22} {len(clips):>7} clips {videos:>6} videos  {'ok' if check else 'FAILED'}  "
          f"{describe(protocol_record(clips, protocol))}")
    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--youcook2-list", type=Path, help="MIL-NCE's validation_youcook.csv")
    parser.add_argument("--youcook2-json", type=Path, help="youcookii_annotations_trainval.json")
    parser.add_argument("--jsfusion", type=Path, help="MSRVTT_JSFUSION_test.csv")
    parser.add_argument("--msrvtt", type=Path, nargs="+", help="MSR-VTT info JSON file(s)")
    parser.add_argument("--nine-k", type=Path, help="MSRVTT_train.9k.csv (with --msrvtt: both 2016 files)")
    args = parser.parse_args()
    ok = True
    if args.youcook2_list:
        clips = load_clips_csv(args.youcook2_list)
        with open(args.youcook2_list, newline="", encoding="utf-8") as handle:
            texts = [line["text"] for line in csv.DictReader(handle)]
        ok &= row("youcook2-val list", clips, [clip.captions for clip in clips] == [(text,) for text in texts])
    if args.youcook2_json:
        for split in ("validation", "training"):
            ok &= row(f"youcook2 json {split}", load_youcook2(args.youcook2_json, split), True)
    if args.jsfusion:
        ids, sentences, _ = read_video_list(args.jsfusion)
        print(f"{'jsfusion list':<22} {len(ids):>7} rows  {len(set(ids)):>6} videos  {len(sentences)} sentences")
        if args.msrvtt:
            clips = load_msrvtt(args.msrvtt, test_list=args.jsfusion)
            ok &= row("msrvtt-1ka", clips, all(clip.captions == (sentences[clip.video_id],) for clip in clips))
    if args.nine_k:
        ids, _, header = read_video_list(args.nine_k)
        print(f"{'9k list':<22} {len(ids):>7} rows  {len(set(ids)):>6} videos  header {', '.join(header) or 'none'}")
    if args.msrvtt:
        ok &= row("msrvtt test split", load_msrvtt(args.msrvtt, "test"), True)
        if args.nine_k:
            ok &= row("msrvtt 9k list", load_msrvtt(args.msrvtt, test_list=args.nine_k), True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
