"""Settings and facts every stage reads: params.yaml as typed settings (`settings`), the model registry
models.yaml (`model_registry`), where files live (`paths`), presets (`presets`), one seed for everything
(`seeding`), and the CPU dispatch and thread pins that make numbers bit-identical across CPUs (`cpu_dispatch`).

May import: vapm.core.
"""
