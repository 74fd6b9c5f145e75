"""The stages of the design sentence, in order: capture -> (motion) -> detect -> track ->
align/classify -> audience (and plays) -> select, which reads the ad catalog (edge/catalog.py,
below the outputs too: the display player serves its creatives).

Each stage hands typed records (edge/records.py) forward; none reaches back. The main
loop that drives them is edge/service.py."""
