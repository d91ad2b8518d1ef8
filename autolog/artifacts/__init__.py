"""Artifacts: files logged to a run, secured locally at once, uploaded in the background.

The path of a file: the caller's thread copies it into the staging area under its sha256
(:mod:`.staging`) and records the upload in this process's journal (:mod:`.journal`);
the uploader thread (:mod:`.uploader`) puts it where the run's ``artifact_uri`` says
(:mod:`.destinations`), verifies it, and marks it done.
"""
