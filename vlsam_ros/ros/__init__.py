"""The ROS 2 shell: node, parameters, image and detection messages, visualization."""
