"""Models in MLflow's format: saved off the training thread, uploaded as artifacts,
registered in MLflow's registry (:mod:`.saver`, :mod:`.registry`)."""
