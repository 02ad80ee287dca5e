"""Camera-rate following of discovered objects with persistent track ids (no rclpy).

``tracker.Tracker`` holds one camera's tracks; ``followers`` move them frame to frame
(``FlowFollower``: optical flow + SAM; ``memory_follower.MemoryFollower``: a SAM 2-family
video tracker); ``association`` matches late discovery answers and holds the loss rules;
``two_rate.TwoRateSequence`` drives a frame sequence offline; ``metrics`` scores identities.
"""
