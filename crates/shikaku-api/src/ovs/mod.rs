//! The folder interface of the real verification terminal (オンライン資格確認の連携), as
//! receipt computers and medical-record systems speak it: request XML files dropped into
//! `DIR/req`, answers written to `DIR/res`, requests that cannot be answered moved to
//! `DIR/err` (protocol/OVS.md). [`xml`] reads and writes the files (sans-IO); [`folder`]
//! watches the folder and answers through the clinic's runtime.

pub mod folder;
pub mod xml;

pub use folder::{OvsFolder, OvsOptions, OvsStats};
pub use xml::{parse_request, render_answer, Charset, Lang, OvsError, OvsRequest, RequestKind};
