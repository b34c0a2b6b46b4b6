"""Training DProtoNet: losses (eq. 4-7), multi-image prototype learning (eq. 9-11), phases, the loop."""
