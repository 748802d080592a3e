"""UCF11 action recognition from raw frames: the task is ``tensorlstm.tasks.video.UCF11Task`` (the pipeline
shared with Hollywood2 and YouTube Celebrities); importable from here as before."""

from tensorlstm.tasks.video import FrameClassifier, UCF11Task, VideoTask, copy_runs

__all__ = ["FrameClassifier", "UCF11Task", "VideoTask", "copy_runs"]
