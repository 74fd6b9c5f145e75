"""The stages of the design sentence, in order: capture -> (motion) -> detect -> track ->
align/classify -> audience (and plays) -> select, with the ad catalog select reads.

Each stage hands typed records (edge/records.py) forward; none reaches back. The main
loop that drives them is edge/service.py."""
