"""meshwasm:propagation from Python, through PyPI `wasmtime` (its `wasmtime.component` API).

    from propagation import Propagation
    p = Propagation("target/components/meshwasm_propagation.wasm")
    out = p.propagate(request_headers)          # [(name, value), ...] in any case
    call_next_service(headers=dict(out.headers))

`propagate` returns the component's `outgoing` record: attributes `headers`, `context`,
`sampled`, `baggage`, `request-id` and `invalid` (WIT names; `getattr(out, "request-id")`).
"""

from wasmtime import Engine, Store, WasiConfig
from wasmtime.component import Component, Linker

INTERFACE = "meshwasm:propagation/propagate@0.1.0"


class PropagationError(Exception):
    """The component refused the configuration (its `result` was `err`)."""


class Propagation:
    """One instance of the component; not for use by several threads at once."""

    def __init__(self, wasm_path, engine=None):
        self.engine = engine or Engine()
        self.store = Store(self.engine)
        # The component imports WASI (the wasip1 adapter's), and uses none of it at run time.
        self.store.set_wasi(WasiConfig())
        linker = Linker(self.engine)
        linker.add_wasip2()
        component = Component.from_file(self.engine, str(wasm_path))
        instance = linker.instantiate(self.store, component)
        interface = instance.get_export_index(self.store, INTERFACE)
        if interface is None:
            raise PropagationError(f"{wasm_path} does not export {INTERFACE}")

        def func(name):
            index = instance.get_export_index(self.store, name, interface)
            found = index is not None and instance.get_func(self.store, index)
            if not found:
                raise PropagationError(f"{wasm_path}: {INTERFACE} has no function {name}")
            return found

        self._default_config = func("default-config")
        self._propagate = func("propagate")
        self.config = self.default_config()

    def default_config(self):
        """The sidecar filter's defaults, as a `config` record to change and pass back."""
        return self._default_config(self.store)

    def propagate(self, headers, config=None):
        """The `outgoing` record for a request with `headers` (pairs of strings)."""
        result = self._propagate(self.store, config or self.config, list(headers))
        # wasmtime lifts `result<outgoing, string>` untagged (its two cases have distinct
        # Python types): the record, or the error's string.
        if isinstance(result, str):
            raise PropagationError(result)
        return result
