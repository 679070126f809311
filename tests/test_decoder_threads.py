"""How many H.264 decoder threads a decode task gets (howto_prep.extract.run.decoder_threads): one while
the tasks fill the CPU slots (one decoder per core costs about 6% less CPU per video-second than
FFmpeg's automatic frame threads, bench/bench_decode_limit.py), the spare cores when videos are few."""

from __future__ import annotations

from howto_prep.extract.run import MAX_DECODER_THREADS, decoder_threads


def test_one_thread_per_task_while_the_tasks_fill_the_cores():
    assert decoder_threads(cpus=2, max_videos=2, videos=32) == 1
    assert decoder_threads(cpus=16, max_videos=15, videos=1000) == 1  # --gpus 1 on a 16-core box
    assert decoder_threads(cpus=8, max_videos=12, videos=100) == 1  # more tasks than cores (--workers)


def test_spare_cores_go_to_the_few_videos_left():
    assert decoder_threads(cpus=16, max_videos=15, videos=1) == MAX_DECODER_THREADS  # one long video
    assert decoder_threads(cpus=16, max_videos=15, videos=4) == 4
    assert decoder_threads(cpus=64, max_videos=63, videos=1) == MAX_DECODER_THREADS
    assert decoder_threads(cpus=2, max_videos=2, videos=0) == 2
