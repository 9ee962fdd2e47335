"""Frame sources and sinks: image files, folders, video files, V4L2 cameras, RTSP/HTTP streams."""
