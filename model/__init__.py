"""The Z3 model of IA-32 protected-mode state and instruction semantics (imports only z3).

``state``: the machine state; ``outcome``: faults as values; ``encoding``: opcode notation and
decoding; ``form``: the one-definition-per-form vocabulary; ``checks``: shared protection logic;
``isa``: the forms by theme; ``profiles``: processor features and monitor host settings.
"""
