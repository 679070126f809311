"""`howto-prep extract`: videos + captions -> WebDataset shards of 2D, 3D, audio and text features.

command (the CLI handler), plan (the validated invocation, built once), inputs (video files,
caption.json, the CSV, word2vec), video_set (choose the work, run it, finish the set), run (Ray,
the model actors, writing samples as they arrive), pipeline (the Ray scheduling loop), ray_tasks
(what runs inside Ray: the decode stream and the model actor), sample (one video's shard sample),
annotations (YouCook2 / MSR-VTT / clips.csv files), clip_set (clip-level sets cut from video-level
features).
"""
