"""Engine core: requests, KV block pool and manager, scheduler, engine loop."""
