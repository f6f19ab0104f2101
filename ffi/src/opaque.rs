//! The one place where opaque C pointers turn into Rust objects and back.
//!
//! Each opaque C type (`sockeye_server`, `sockeye_conn`, `sockeye_request`, `sockeye_upgrade`)
//! names, through [`Opaque`], the Rust type its pointers really point to. The library hands a
//! pointer out with [`to_opaque`] and reads it back with [`from_opaque`], [`as_ref`] or
//! [`as_mut`]; no other code casts between the two, so a pointer can only ever be read back as
//! the type it was handed out as.

/// An opaque C type, and the Rust object behind every pointer to it the library hands out.
pub(crate) trait Opaque {
    /// The Rust object a `*Self` points to. Its lifetimes are those of the borrows the object
    /// wraps (a callback's view of a connection or a request: `'a` of the borrow, `'b` of what
    /// it borrows); types that wrap none ignore them.
    type Target<'a, 'b: 'a>;
}

/// Turns a pointer to a Rust object into the opaque pointer C receives. No dereference: safe.
/// When C may change the object through the result (`sockeye_conn`, `sockeye_upgrade`), `obj`
/// must come from a `&mut` (`std::ptr::from_mut`), not a shared reference.
pub(crate) fn to_opaque<O: Opaque>(obj: *const O::Target<'_, '_>) -> *mut O {
    obj.cast_mut().cast()
}

/// Turns an opaque pointer back into a pointer to its Rust object, without dereferencing it
/// (for `Arc::from_raw` and the like).
pub(crate) fn from_opaque<'a, 'b: 'a, O: Opaque>(p: *const O) -> *const O::Target<'a, 'b> {
    p.cast()
}

/// Borrows the Rust object behind an opaque pointer; `None` for NULL.
///
/// # Safety
/// `p` must be NULL or a pointer this library handed out (through [`to_opaque`]) for `O`, whose
/// object is still live for `'a` and is not changed through any other path meanwhile.
pub(crate) unsafe fn as_ref<'a, O: Opaque>(p: *const O) -> Option<&'a O::Target<'a, 'a>> {
    // SAFETY: NULL gives `None`; otherwise `p` points to a live `O::Target` that nothing
    // changes while the borrow lasts (caller's contract).
    unsafe { from_opaque(p).as_ref() }
}

/// Borrows the Rust object behind an opaque pointer mutably; `None` for NULL.
///
/// # Safety
/// As for [`as_ref`], and the pointer must have been handed out from a `&mut`, and nothing else
/// may use the object while the returned borrow lasts.
pub(crate) unsafe fn as_mut<'a, O: Opaque>(p: *mut O) -> Option<&'a mut O::Target<'a, 'a>> {
    // SAFETY: NULL gives `None`; otherwise `p` points to a live, writable `O::Target` that
    // nothing else uses while the borrow lasts (caller's contract).
    unsafe { from_opaque(p).cast_mut().as_mut() }
}
