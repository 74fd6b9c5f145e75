"""Where decisions and aggregates leave the pipeline: MQTT (publish, its client, the topic
table, Home Assistant discovery), the display player (bridge and server, its page beside
it), the dashboard, the local audience store, Prometheus metrics and systemd's notify
socket. They receive events (edge/events.py) and never reach back into a stage."""
