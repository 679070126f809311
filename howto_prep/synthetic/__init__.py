"""The synthetic HowTo100M look-alike that the demo, tests and benchmarks run on, and its mirror.

corpus (`generate_corpus`: the files in HowTo100M's formats), metadata (the CSV, truth and README
texts), content (tasks and steps), plans (one video's format and timeline, from the seed),
narration (ASR-like captions), rendering (a plan -> frames and sound), benchmarks (YouCook2 /
MSR-VTT annotations of the held-out part), word2vec (a small GoogleNews-format model), mp4
(writing H.264 + AAC with PyAV), mirror_server (a loopback stand-in for the authors' mirror),
command (the `synth` and `mirror` CLI handlers).
"""
