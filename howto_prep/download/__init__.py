"""`howto-prep download`: HowTo100M ids or URLs -> validated video files under `videos/` + `manifest.sqlite`.

command (the driver: what is left, Ray tasks, recording), plan (the validated invocation), task (one
video inside a worker: retries, validation, the final rename), mirror_client and youtube (the two
ways to fetch), fetch_error (how they fail), catalog (id lists and the HowTo100M CSV), manifest (the
SQLite record), credentials (the mirror password, kept out of every text).
"""
