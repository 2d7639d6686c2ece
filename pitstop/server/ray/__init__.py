"""``pitstop serve --replicas N``: pitstop engine replicas on Ray Serve behind the OpenAI-compatible API.

Modules: ``routing`` (routing keys of a request, no Ray), ``replica`` (the engine deployment: one engine and the
single-process app of ``pitstop.server.app.create_app`` per replica, driven in-process over ASGI), ``ingress`` (the
HTTP front: forwards every request to a replica through a DeploymentHandle, aggregates /health, /metrics and
/debug/kv), ``request_router`` (a Ray Serve ``RequestRouter`` that lets a ``pitstop.sim.routers`` router choose),
``app`` (build the application, start Ray and Serve). Only ``routing`` may be imported without Ray installed.
"""
