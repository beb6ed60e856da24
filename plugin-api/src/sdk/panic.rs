//! A panic's message, with its location: the hook records it, the guards read it. Shared by the
//! FFI guards and the runtime's blocking pool.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Once;

use super::logging;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Extracts a panic's message; prefers what the panic hook recorded (it has the location).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(recorded) = LAST_PANIC.with(|p| p.borrow_mut().take()) {
        return recorded;
    }
    payload_text(payload)
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Records each panic's message and location for [`panic_message`], once per process.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let msg = payload_text(info.payload());
            let text = match info.location() {
                Some(loc) => format!("{msg} (at {}:{}:{})", loc.file(), loc.line(), loc.column()),
                None => msg,
            };
            logging::log(crate::abi::LogLevel::DEBUG, "panic", &text);
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
    });
}
