"""What runs by itself around the ingest job: the sensors that start runs and turn their ends
into truthful progress rows (`ingest_sensors`, `dead_runs`), notification delivery
(`notifications`), and the daily cleanup (`cleanup`); `definitions` collects them."""
