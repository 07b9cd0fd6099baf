//! The lockserver against its real stores (embedded and Redis). Built under issue 3.
