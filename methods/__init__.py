"""The methods that fill the pipeline's slots: one module each (listed in step/registry.py's METHODS).

A method module holds all that is its own:
  HELP                              one line for `--method`'s help
  STEPS {slot: module or None}      the step modules it fills slots with (others: step.registry.PASS's)
  PROFILES {profile: {field: value}} its settings: 'paper' (used by every profile unless that profile's
                                    entry overrides it), 'demo', 'smoke'; applied over misc.config.PROFILES
  validate(cfg) -> list[str]        its own one-line checks of values that parse but cannot work
"""
