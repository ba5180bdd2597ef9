//! The folder interface's files, sans-IO: a request XML's bytes (UTF-8 or Shift_JIS, as its
//! declaration says) parsed into an [`OvsRequest`] or an [`OvsError`] naming the element at
//! fault, and an answer rendered into bytes in the request's encoding — the element
//! structure and code tables of the real terminal, shikaku's freshness and its two codes
//! the real interface has no number for in `ShikakuExtension` (protocol/OVS.md).

use shikaku_core::text::jst_clock;
use shikaku_core::{Answer, AnswerCode, CardToken, Date, EndReason, MemberKey, Person, Sex};

/// The largest request file read (real ones are about 1 KiB).
pub const REQUEST_MAX: usize = 64 * 1024;
/// The most elements a request may hold.
const ELEMENTS_MAX: usize = 256;
/// The deepest nesting a request may have.
const DEPTH_MAX: usize = 8;
/// The longest text of one element, in characters.
const TEXT_MAX: usize = 256;

/// The character encoding of a request, and so of its answer (`CharacterCodeIdentifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// UTF-8 (code 0).
    Utf8,
    /// Shift_JIS (code 1; read and written as Windows-31J, its superset in use on Windows).
    ShiftJis,
}

impl Charset {
    /// `CharacterCodeIdentifier`.
    pub fn code(self) -> &'static str {
        match self {
            Charset::Utf8 => "0",
            Charset::ShiftJis => "1",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::ShiftJis => "Shift_JIS",
        }
    }
}

/// The language of the messages an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// Japanese (the default: reception in Japan).
    #[default]
    Ja,
    /// English.
    En,
}

/// What a request asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Insurance-card data (or an eligibility certificate) with the birth date
    /// (`ReferenceClassification` 2).
    CardData {
        /// The member key read from `InsurerNumber`, `InsuredCardSymbol`,
        /// `InsuredIdentificationNumber`, `InsuredBranchNumber`.
        key: MemberKey,
        /// `Birthdate`.
        birth: Date,
    },
    /// The card's token (`ShikakuCardToken`, shikaku's extension: the real terminal reads the
    /// card itself), `ReferenceClassification` 1.
    Card(CardToken),
}

/// A parsed request.
#[derive(Clone, PartialEq, Eq)]
pub struct OvsRequest {
    /// The encoding it came in.
    pub charset: Charset,
    /// `QualificationConfirmationDate`: the service date.
    pub service_date: Date,
    /// `MedicalInstitutionCode`, echoed.
    pub institution: String,
    /// `ArbitraryFileIdentifier`, echoed.
    pub file_id: String,
    /// What it asks about.
    pub kind: RequestKind,
    /// `LimitApplicationCertificateRelatedConsFlg`: `Some(true)` for 1, `Some(false)` for 0.
    pub consent: Option<bool>,
    /// `QualificationConfirmSearchInfo`'s children as read, echoed in the answer.
    pub search_info: Vec<(String, String)>,
}

// Requests carry member data: never in debug output.
impl std::fmt::Debug for OvsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OvsRequest(…)")
    }
}

/// Why a request cannot be answered: its code and a message naming the problem (never the
/// values it holds), in both languages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsError {
    /// `SHK9xx` (protocol/OVS.md, "Error codes").
    pub code: &'static str,
    /// English.
    pub en: String,
    /// Japanese.
    pub ja: String,
}

impl OvsError {
    fn new(code: &'static str, en: impl Into<String>, ja: impl Into<String>) -> OvsError {
        OvsError { code, en: en.into(), ja: ja.into() }
    }

    /// The message in `lang`.
    pub fn message(&self, lang: Lang) -> &str {
        match lang {
            Lang::Ja => &self.ja,
            Lang::En => &self.en,
        }
    }

    fn missing(path: &str) -> OvsError {
        OvsError::new("SHK904", format!("{path} is missing"), format!("{path} がありません"))
    }

    fn invalid(path: &str, what: &str, ja: &str) -> OvsError {
        OvsError::new(
            "SHK904",
            format!("{path} is not valid: {what}"),
            format!("{path} が不正です: {ja}"),
        )
    }

    /// The check could not be recorded (the ledger refused the write).
    pub fn not_recorded() -> OvsError {
        OvsError::new(
            "SHK909",
            "the check could not be recorded in the clinic's ledger; nothing was answered — send the request again",
            "確認の記録を台帳に書き込めませんでした。回答していません。もう一度要求してください",
        )
    }

    /// The ledger needs the birth date for this member key (sealed insurer).
    pub fn needs_birth_date() -> OvsError {
        OvsError::invalid(
            "Birthdate",
            "this insurer's members are looked up with their birth date",
            "この保険者の資格は生年月日とともに照会します",
        )
    }
}

/// An element of the request: its name, text and children.
#[derive(Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// The encoding a request's XML declaration names (UTF-8 when there is none).
fn charset_of(bytes: &[u8]) -> Result<Charset, OvsError> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Ok(Charset::Utf8);
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(unsupported_encoding("UTF-16"));
    }
    if !bytes.starts_with(b"<?xml") {
        return Ok(Charset::Utf8);
    }
    let end = bytes.iter().take(200).position(|&b| b == b'>').unwrap_or(0);
    let decl = String::from_utf8_lossy(&bytes[..end]);
    let Some(at) = decl.find("encoding") else { return Ok(Charset::Utf8) };
    let rest = decl[at + "encoding".len()..].trim_start().trim_start_matches('=').trim_start();
    let quote = rest.chars().next().unwrap_or('"');
    let label: String = rest.chars().skip(1).take_while(|&c| c != quote).collect();
    match label.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => Ok(Charset::Utf8),
        "shift_jis" | "shift-jis" | "sjis" | "x-sjis" | "windows-31j" | "ms932" | "cp932"
        | "ms_kanji" | "csshiftjis" => Ok(Charset::ShiftJis),
        _ => Err(unsupported_encoding(&label)),
    }
}

fn unsupported_encoding(label: &str) -> OvsError {
    // The label is the file's own declaration, not member data; bounded for the message.
    let label: String = label.chars().filter(|c| c.is_ascii_graphic()).take(20).collect();
    OvsError::new(
        "SHK902",
        format!("encoding {label:?} is not supported: send UTF-8 or Shift_JIS"),
        format!("文字コード {label:?} には対応していません。UTF-8 か Shift_JIS で送ってください"),
    )
}

/// Decodes a request's bytes into text.
fn decode(bytes: &[u8]) -> Result<(Charset, String), OvsError> {
    let charset = charset_of(bytes)?;
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(bytes);
    let encoding = match charset {
        Charset::Utf8 => encoding_rs::UTF_8,
        Charset::ShiftJis => encoding_rs::SHIFT_JIS,
    };
    match encoding.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Ok((charset, text.into_owned())),
        None => Err(OvsError::new(
            "SHK902",
            format!("the file is not valid {}, as its declaration says it is", charset.label()),
            format!("ファイルが宣言された文字コード {} として読めません", charset.label()),
        )),
    }
}

fn not_well_formed(position: u64) -> OvsError {
    OvsError::new(
        "SHK901",
        format!("not well-formed XML (near byte {position})"),
        format!("XML として読めません（{position} バイト目付近）"),
    )
}

/// Parses the XML text into its element tree, within the limits.
fn tree(text: &str) -> Result<Element, OvsError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    // Text is kept as written (an NHI insurer number comes padded with spaces, and is echoed
    // so); whitespace-only text between elements is indentation and dropped.
    let mut stack: Vec<Element> = vec![Element::default()];
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|_| not_well_formed(reader.error_position()))?;
        let position = reader.buffer_position();
        match event {
            Event::Start(_) | Event::Empty(_) if stack.len() > DEPTH_MAX => {
                return Err(too_large(
                    "nesting deeper than 8 elements",
                    "要素の入れ子が8段を超えています",
                ));
            }
            Event::Start(ref start) | Event::Empty(ref start) => {
                count += 1;
                if count > ELEMENTS_MAX {
                    return Err(too_large("more than 256 elements", "要素が256個を超えています"));
                }
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let element = Element { name, ..Element::default() };
                // An empty element is complete at once; a started one waits for its end.
                match (&event, stack.last_mut()) {
                    (Event::Start(_), _) => stack.push(element),
                    (_, Some(parent)) => parent.children.push(element),
                    (_, None) => return Err(not_well_formed(position)),
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or_else(|| not_well_formed(position))?;
                let parent = stack.last_mut().ok_or_else(|| not_well_formed(position))?;
                parent.children.push(done);
            }
            Event::Text(t) => {
                let piece = t.xml_content().map_err(|_| not_well_formed(position))?;
                if !piece.trim().is_empty() {
                    push_text(&mut stack, &piece)?;
                }
            }
            Event::CData(t) => {
                let piece = t.decode().map_err(|_| not_well_formed(position))?;
                push_text(&mut stack, &piece)?;
            }
            Event::GeneralRef(r) => {
                let piece = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r.decode().map_err(|_| not_well_formed(position))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| not_well_formed(position))?
                            .to_owned()
                    }
                    Err(_) => return Err(not_well_formed(position)),
                };
                push_text(&mut stack, &piece)?;
            }
            Event::DocType(_) => {
                return Err(OvsError::new(
                    "SHK901",
                    "a DOCTYPE is not accepted in a request",
                    "要求に DOCTYPE は使えません",
                ))
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    let mut root = stack.pop().filter(|_| stack.is_empty()).ok_or_else(|| {
        OvsError::new(
            "SHK901",
            "not well-formed XML: the file ends inside an element",
            "XML として読めません: 要素の途中でファイルが終わっています",
        )
    })?;
    match root.children.len() {
        1 => Ok(root.children.remove(0)),
        _ => Err(not_well_formed(text.len() as u64)),
    }
}

fn push_text(stack: &mut [Element], piece: &str) -> Result<(), OvsError> {
    if let Some(open) = stack.last_mut() {
        open.text.push_str(piece);
        if open.text.chars().count() > TEXT_MAX {
            return Err(too_large(
                "an element's text is longer than 256 characters",
                "要素の文字列が256文字を超えています",
            ));
        }
    }
    Ok(())
}

fn too_large(what: &str, ja: &str) -> OvsError {
    OvsError::new(
        "SHK905",
        format!("the request is too large: {what}"),
        format!("要求が大きすぎます: {ja}"),
    )
}

/// `YYYYMMDD`.
fn yyyymmdd(path: &str, text: &str) -> Result<Date, OvsError> {
    let bad =
        || OvsError::invalid(path, "must be a date YYYYMMDD", "日付 YYYYMMDD で指定してください");
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    format!("{}-{}-{}", &text[..4], &text[4..6], &text[6..]).parse::<Date>().map_err(|_| bad())
}

/// Parses a request file's bytes.
pub fn parse_request(bytes: &[u8]) -> Result<OvsRequest, OvsError> {
    if bytes.len() > REQUEST_MAX {
        return Err(too_large("larger than 64 KiB", "64 KiB を超えています"));
    }
    let (charset, text) = decode(bytes)?;
    let root = tree(&text)?;
    if root.name != "XmlMsg" {
        return Err(not_a_request(
            "the root element is not XmlMsg",
            "ルート要素が XmlMsg ではありません",
        ));
    }
    let header = root.child("MessageHeader").ok_or_else(|| OvsError::missing("MessageHeader"))?;
    let body = root.child("MessageBody").ok_or_else(|| OvsError::missing("MessageBody"))?;
    let info = body.child("QualificationConfirmSearchInfo").ok_or_else(|| {
        not_a_request(
            "MessageBody holds no QualificationConfirmSearchInfo",
            "MessageBody に QualificationConfirmSearchInfo がありません",
        )
    })?;
    let text_of = |parent: &Element, parent_path: &str, name: &str| -> Option<(String, String)> {
        parent.child(name).map(|e| (format!("{parent_path}/{name}"), e.text.trim().to_owned()))
    };
    let required = |parent: &Element, parent_path: &str, name: &str| match text_of(
        parent,
        parent_path,
        name,
    ) {
        Some((_, text)) if !text.is_empty() => Ok(text),
        _ => Err(OvsError::missing(&format!("{parent_path}/{name}"))),
    };
    let service_date = yyyymmdd(
        "MessageHeader/QualificationConfirmationDate",
        &required(header, "MessageHeader", "QualificationConfirmationDate")?,
    )?;
    let institution = text_of(header, "MessageHeader", "MedicalInstitutionCode")
        .map(|(_, t)| t)
        .unwrap_or_default();
    let file_id = text_of(header, "MessageHeader", "ArbitraryFileIdentifier")
        .map(|(_, t)| t)
        .unwrap_or_default();
    const INFO: &str = "MessageBody/QualificationConfirmSearchInfo";
    let consent = match text_of(info, INFO, "LimitApplicationCertificateRelatedConsFlg") {
        None => None,
        Some((_, t)) if t.is_empty() => None,
        Some((_, t)) if t == "0" => Some(false),
        Some((_, t)) if t == "1" => Some(true),
        Some((path, _)) => {
            return Err(OvsError::invalid(&path, "must be 0 or 1", "0 か 1 で指定してください"))
        }
    };
    let kind = if let Some(token) = info.child("ShikakuCardToken") {
        let path = format!("{INFO}/ShikakuCardToken");
        let text = token.text.trim();
        if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OvsError::invalid(
                &path,
                "that looks like an Individual Number (My Number): shikaku takes only the card's opaque token",
                "個人番号のように見えます。カードの識別トークンのみ受け付けます",
            ));
        }
        let token = text.parse::<CardToken>().map_err(|_| {
            OvsError::invalid(
                &path,
                "must be 64 hexadecimal characters",
                "16進数64文字で指定してください",
            )
        })?;
        RequestKind::Card(token)
    } else if info.child("InsurerNumber").is_some() {
        let insurer_path = format!("{INFO}/InsurerNumber");
        // A 6-digit national health insurance number comes padded to 8 with leading spaces.
        let insurer = info
            .child("InsurerNumber")
            .map(|e| e.text.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OvsError::missing(&insurer_path))?
            .parse::<shikaku_core::InsurerNumber>()
            .map_err(|_| {
                OvsError::invalid(
                    &insurer_path,
                    "must be 8 digits, or 6 (national health insurance), with a correct check digit",
                    "8桁（国保は6桁）で、検証番号が正しい保険者番号を指定してください",
                )
            })?;
        let symbol = text_of(info, INFO, "InsuredCardSymbol").map(|(_, t)| t).unwrap_or_default();
        let number = required(info, INFO, "InsuredIdentificationNumber")?;
        let branch_path = format!("{INFO}/InsuredBranchNumber");
        let branch = match text_of(info, INFO, "InsuredBranchNumber").map(|(_, t)| t) {
            None => 0,
            Some(t) if t.is_empty() => 0,
            Some(t) if t.len() <= 2 && t.bytes().all(|b| b.is_ascii_digit()) => {
                t.parse::<u8>().unwrap_or(0)
            }
            Some(_) => {
                return Err(OvsError::invalid(
                    &branch_path,
                    "must be two digits 00-99",
                    "2桁の数字（00〜99）で指定してください",
                ))
            }
        };
        let (symbol, _) = shikaku_core::member::normalize_typed_key(&symbol);
        let (number, _) = shikaku_core::member::normalize_typed_key(&number);
        let key = MemberKey::new(insurer, &symbol, &number, branch).map_err(|_| {
            OvsError::invalid(
                &format!("{INFO}/InsuredCardSymbol, InsuredIdentificationNumber"),
                "at most 20 characters each, without ':', spaces or control characters",
                "記号・番号は各20文字以内で、「:」・空白・制御文字は使えません",
            )
        })?;
        let birth_path = format!("{INFO}/Birthdate");
        let birth = yyyymmdd(&birth_path, &required(info, INFO, "Birthdate")?)?;
        RequestKind::CardData { key, birth }
    } else {
        return Err(not_a_request(
            "QualificationConfirmSearchInfo holds neither insurance-card data (InsurerNumber …) nor a card token (ShikakuCardToken)",
            "QualificationConfirmSearchInfo に保険証の情報（InsurerNumber など）もカードのトークン（ShikakuCardToken）もありません",
        ));
    };
    let search_info = info.children.iter().map(|c| (c.name.clone(), c.text.clone())).collect();
    Ok(OvsRequest { charset, service_date, institution, file_id, kind, consent, search_info })
}

fn not_a_request(why: &str, ja: &str) -> OvsError {
    OvsError::new(
        "SHK903",
        format!("not a qualification confirmation request: {why}"),
        format!("資格確認の要求ではありません: {ja}"),
    )
}

/// The identity of the present patient, as the answer may show it.
#[derive(Clone)]
pub struct Identity {
    /// The real member key.
    pub key: MemberKey,
    /// Demographics.
    pub person: Person,
}

/// Everything an answer file is rendered from.
pub struct AnswerFile<'a> {
    /// The request (echoed), or `None` when it could not be parsed.
    pub request: Option<&'a OvsRequest>,
    /// The encoding to write in.
    pub charset: Charset,
    /// The answer, or why there is none.
    pub outcome: Result<Answered<'a>, &'a OvsError>,
    /// When the answer was given, Unix ms.
    pub now_ms: u64,
    /// The message language.
    pub lang: Lang,
}

/// A check's answer with what the folder interface shows beside it.
pub struct Answered<'a> {
    /// The answer.
    pub answer: &'a Answer,
    /// The present patient's identity where the ledger could show it.
    pub identity: Option<&'a Identity>,
    /// `plain`, `opened`, `sealed`, `erased` or `none`.
    pub member_data: &'static str,
    /// Whether the clinic was in sync with its hub.
    pub online: bool,
}

/// `QualificationValidity`: 1–5 for the five answers the real interface has, empty for
/// pending-successor and unknown (which have no code there, and are never shown as valid).
pub fn validity_code(code: AnswerCode) -> &'static str {
    match code {
        AnswerCode::Valid => "1",
        AnswerCode::Invalid => "2",
        AnswerCode::InvalidNewerExists => "3",
        AnswerCode::NoMatch => "4",
        AnswerCode::MultipleMatches => "5",
        AnswerCode::PendingSuccessor | AnswerCode::Unknown => "",
    }
}

/// The real terminal's word for each answer, and shikaku's for its own two.
pub fn code_word(code: AnswerCode, lang: Lang) -> &'static str {
    match (lang, code) {
        (Lang::Ja, AnswerCode::Valid) => "有効",
        (Lang::Ja, AnswerCode::Invalid) => "無効",
        (Lang::Ja, AnswerCode::InvalidNewerExists) => "無効（新しい資格あり）",
        (Lang::Ja, AnswerCode::NoMatch) => "該当資格なし",
        (Lang::Ja, AnswerCode::MultipleMatches) => "複数該当",
        (Lang::Ja, AnswerCode::PendingSuccessor) => {
            "確認待ち（新しい保険者への加入を本人申告・未登録）"
        }
        (Lang::Ja, AnswerCode::Unknown) => {
            "判定不能（この保険者の資格情報をこの端末は保持していません）"
        }
        (Lang::En, AnswerCode::Valid) => "valid",
        (Lang::En, AnswerCode::Invalid) => "invalid",
        (Lang::En, AnswerCode::InvalidNewerExists) => "invalid (a newer qualification exists)",
        (Lang::En, AnswerCode::NoMatch) => "no matching qualification",
        (Lang::En, AnswerCode::MultipleMatches) => "multiple matches",
        (Lang::En, AnswerCode::PendingSuccessor) => {
            "pending successor (the patient declared a new insurer that has not registered yet)"
        }
        (Lang::En, AnswerCode::Unknown) => {
            "unknown (this clinic does not hold that insurer's qualifications)"
        }
    }
}

/// `ReasonOfLoss` (01 death, 02 public assistance, 03 other medical insurance, 99 other).
/// A job change and the move to the late-stage elderly system mean other medical insurance;
/// retirement and a move out of the municipality may or may not, so they are 99.
pub fn reason_of_loss(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Death => "01",
        EndReason::JobChange | EndReason::Age75 => "03",
        EndReason::Retirement | EndReason::MoveOutOfMunicipality | EndReason::Other => "99",
    }
}

/// `YYYYMMDD` of a date.
pub fn date8(date: Date) -> String {
    let (y, m, d) = date.ymd();
    format!("{y:04}{m:02}{d:02}")
}

/// `YYYYMMDDhhmmss` in Japanese time.
pub fn time14(ms: u64) -> String {
    let (h, m, s) = jst_clock(ms);
    format!("{}{h:02}{m:02}{s:02}", date8(Date::from_unix_ms_jst(ms)))
}

/// An XML writer of nested elements with escaped text.
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn open(&mut self, name: &str) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.indent();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.indent();
        if text.is_empty() {
            self.out.push('<');
            self.out.push_str(name);
            self.out.push_str("/>\n");
            return;
        }
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.out.push_str(&quick_xml::escape::escape(text));
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }
}

/// Freshness in one word: `current` online, `ageing` offline within
/// [`shikaku_core::STALE_AFTER_S`] of the last sync, `stale` beyond it, `never_synced`.
pub fn freshness_word(online: bool, staleness_s: Option<u64>) -> &'static str {
    match (online, staleness_s) {
        (_, None) => "never_synced",
        (true, Some(_)) => "current",
        (false, Some(s)) if s <= shikaku_core::STALE_AFTER_S => "ageing",
        (false, Some(_)) => "stale",
    }
}

/// The processing result (status, code, message) of an answered check.
fn processing_result(a: &Answered<'_>, lang: Lang) -> (&'static str, &'static str, String) {
    let answer = a.answer;
    let word = code_word(answer.code, lang);
    let mut notes = Vec::new();
    if let Some(damage) = &answer.damage {
        notes.push(match lang {
            Lang::Ja => format!(
                "台帳に読めない記録が {} 件あります（修復待ち）。この回答は誤っている可能性があります",
                damage.records
            ),
            Lang::En => format!(
                "the ledger has {} unreadable record(s) not yet repaired: this answer may be wrong",
                damage.records
            ),
        });
    }
    if !a.online {
        let since = answer
            .knowledge
            .last_hub_sync_ms
            .map(|ms| format!("{} {}", Date::from_unix_ms_jst(ms), shikaku_core::text::hhmm(ms)));
        notes.push(match (lang, since, answer.knowledge.staleness_s) {
            (Lang::Ja, Some(at), Some(s)) => {
                format!("オフライン応答: 最終同期 {at}（{} 分前）の情報による回答です", s / 60)
            }
            (Lang::Ja, _, _) => "オフライン応答: 保険者との同期がまだ一度もありません".to_owned(),
            (Lang::En, Some(at), Some(s)) => {
                format!(
                    "offline answer: from what was known at the last sync, {at} JST ({} min ago)",
                    s / 60
                )
            }
            (Lang::En, _, _) => "offline answer: never synced with the insurer's hub".to_owned(),
        });
    }
    let (status, code) = match (answer.code, answer.damage.is_some(), a.online) {
        (AnswerCode::PendingSuccessor, _, _) => ("2", "SHK200"),
        (AnswerCode::Unknown, _, _) => ("2", "SHK201"),
        (_, true, _) => ("1", "SHK101"),
        (_, false, false) => ("1", "SHK100"),
        (_, false, true) => ("1", ""),
    };
    let message = if code.is_empty() {
        String::new()
    } else {
        let mut parts = vec![word.to_owned()];
        parts.extend(notes);
        parts.join(if lang == Lang::Ja { "。" } else { "; " })
    };
    (status, code, message)
}

/// Renders an answer file, encoded as the request was.
pub fn render_answer(file: &AnswerFile<'_>) -> Vec<u8> {
    let mut x = Xml { out: String::new(), depth: 0 };
    x.out.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"{}\" standalone=\"yes\"?>\n",
        file.charset.label()
    ));
    x.open("XmlMsg");
    x.open("MessageHeader");
    x.leaf("ProcessExecutionTime", &time14(file.now_ms));
    let request = file.request;
    x.leaf(
        "QualificationConfirmationDate",
        &request.map(|r| date8(r.service_date)).unwrap_or_default(),
    );
    x.leaf("MedicalInstitutionCode", request.map_or("", |r| r.institution.as_str()));
    x.leaf("ArbitraryFileIdentifier", request.map_or("", |r| r.file_id.as_str()));
    x.leaf(
        "ReferenceClassification",
        match request.map(|r| &r.kind) {
            Some(RequestKind::Card(_)) => "1",
            Some(RequestKind::CardData { .. }) => "2",
            None => "",
        },
    );
    match &file.outcome {
        Err(error) => {
            x.leaf("SegmentOfResult", "9");
            x.leaf("ErrorCode", error.code);
            x.leaf("ErrorMessage", error.message(file.lang));
            x.leaf("CharacterCodeIdentifier", file.charset.code());
            x.close("MessageHeader");
            x.leaf("MessageBody", "");
        }
        Ok(answered) => {
            x.leaf("SegmentOfResult", "1");
            x.leaf("ErrorCode", "");
            x.leaf("ErrorMessage", "");
            x.leaf("CharacterCodeIdentifier", file.charset.code());
            x.close("MessageHeader");
            body(&mut x, request, answered, file.now_ms, file.lang);
        }
    }
    x.close("XmlMsg");
    match file.charset {
        Charset::Utf8 => x.out.into_bytes(),
        // Characters Shift_JIS cannot hold become numeric character references (&#NNNN;),
        // which XML reads back as the same characters.
        Charset::ShiftJis => encoding_rs::SHIFT_JIS.encode(&x.out).0.into_owned(),
    }
}

fn body(x: &mut Xml, request: Option<&OvsRequest>, a: &Answered<'_>, now_ms: u64, lang: Lang) {
    let answer = a.answer;
    let (status, code, message) = processing_result(a, lang);
    x.open("MessageBody");
    x.leaf("ProcessingResultStatus", status);
    x.leaf("ProcessingResultCode", code);
    x.leaf("ProcessingResultMessage", &message);
    x.leaf("QualificationValidity", validity_code(answer.code));
    x.open("QualificationConfirmSearchInfo");
    for (name, text) in request.map(|r| r.search_info.as_slice()).unwrap_or_default() {
        x.leaf(name, text);
    }
    x.close("QualificationConfirmSearchInfo");
    x.open("ResultList");
    let shows_coverage = matches!(
        answer.code,
        AnswerCode::Valid | AnswerCode::Invalid | AnswerCode::InvalidNewerExists
    );
    if shows_coverage && answer.member.is_some() {
        result(x, request, a, now_ms);
    }
    x.close("ResultList");
    extension(x, a, lang);
    x.close("MessageBody");
}

/// One `ResultOfQualificationConfirmation`: what shikaku knows of the qualification.
fn result(x: &mut Xml, request: Option<&OvsRequest>, a: &Answered<'_>, now_ms: u64) {
    let answer = a.answer;
    let person = a.identity.map(|i| &i.person);
    let key = a.identity.map(|i| &i.key);
    x.open("ResultOfQualificationConfirmation");
    x.leaf("InsuredCardClassification", "");
    x.leaf("Name", person.map_or("", |p| p.name.as_str()));
    x.leaf("NameKana", person.map_or("", |p| p.kana.as_str()));
    x.leaf("NameOfOther", "");
    x.leaf("NameOfOtherKana", "");
    x.leaf(
        "Sex1",
        match person.map(|p| p.sex) {
            Some(Sex::Male) => "1",
            Some(Sex::Female) => "2",
            None => "",
        },
    );
    x.leaf("Sex2", "");
    x.leaf("Birthdate", &person.map(|p| date8(p.birth_date)).unwrap_or_default());
    x.leaf("Address", person.map_or("", |p| p.address.as_str()));
    x.leaf("PostNumber", "");
    x.leaf("InsurerName", "");
    x.leaf("InsurerNumber", &answer.insurer.map(|i| i.to_string()).unwrap_or_default());
    x.leaf("InsuredCardSymbol", key.map_or("", |k| k.symbol.as_str()));
    x.leaf("InsuredIdentificationNumber", key.map_or("", |k| k.number.as_str()));
    x.leaf("InsuredBranchNumber", &key.map(|k| format!("{:02}", k.branch)).unwrap_or_default());
    x.leaf(
        "PersonalFamilyClassification",
        match answer.dependant {
            Some(false) => "1",
            Some(true) => "2",
            None => "",
        },
    );
    x.leaf("InsuredName", "");
    x.leaf("InsuredCertificateIssuanceDate", "");
    x.leaf("InsuredCardValidDate", &answer.coverage.map(|c| date8(c.start)).unwrap_or_default());
    let last_day = answer.coverage.and_then(|c| c.end).map(|end| date8(end.add_days(-1)));
    x.leaf("InsuredCardExpirationDate", &last_day.unwrap_or_default());
    x.leaf(
        "InsuredPartialContributionRatio",
        &answer.copay_tenths.map(|t| format!("{:03}", u32::from(t) * 10)).unwrap_or_default(),
    );
    x.leaf("PreschoolClassification", "");
    x.leaf("ReasonOfLoss", answer.end_reason.map_or("", reason_of_loss));
    x.leaf("ElderlyRecipientCertificateInfo", "");
    let shown =
        answer.limit_category.as_deref().filter(|_| request.and_then(|r| r.consent) != Some(false));
    let consented = shown.is_some() || request.and_then(|r| r.consent) == Some(true);
    x.leaf("LimitApplicationCertificateRelatedConsFlg", if consented { "1" } else { "0" });
    x.leaf(
        "LimitApplicationCertificateRelatedConsTime",
        &if request.and_then(|r| r.consent) == Some(true) { time14(now_ms) } else { String::new() },
    );
    if let Some(category) = shown {
        x.open("LimitApplicationCertificateRelatedInfo");
        x.leaf("LimitApplicationCertificateClassification", "01");
        x.leaf("LimitApplicationCertificateClassificationFlag", category);
        x.close("LimitApplicationCertificateRelatedInfo");
    }
    x.leaf("SpecificDiseasesCertificateRelatedConsFlg", "");
    x.leaf("SpecificDiseasesCertificateList", "");
    x.close("ResultOfQualificationConfirmation");
}

/// `ShikakuExtension`: what the real interface has no element for.
fn extension(x: &mut Xml, a: &Answered<'_>, lang: Lang) {
    let answer = a.answer;
    let knowledge = &answer.knowledge;
    x.open("ShikakuExtension");
    x.leaf("AnswerCode", &shikaku_core::text::code_name(answer.code));
    x.leaf("AnswerText", code_word(answer.code, lang));
    x.leaf("Offline", if a.online { "0" } else { "1" });
    x.leaf("LastHubSyncTime", &knowledge.last_hub_sync_ms.map(time14).unwrap_or_default());
    x.leaf("StalenessSeconds", &knowledge.staleness_s.map(|s| s.to_string()).unwrap_or_default());
    x.leaf("Freshness", freshness_word(a.online, knowledge.staleness_s));
    x.leaf("DamagedRecords", &answer.damage.map_or(0, |d| d.records).to_string());
    x.leaf("MemberData", a.member_data);
    x.leaf("CoverageStart", &answer.coverage.map(|c| date8(c.start)).unwrap_or_default());
    x.leaf("LossDate", &answer.coverage.and_then(|c| c.end).map(date8).unwrap_or_default());
    // The reason's name as in the event and the JSON answer (`job_change`, `age75` …).
    let reason = answer.end_reason.and_then(|r| serde_json::to_value(r).ok());
    x.leaf("EndReason", reason.as_ref().and_then(|v| v.as_str()).unwrap_or(""));
    x.leaf("LimitCategoryWithheld", if answer.limit_category_withheld { "1" } else { "0" });
    x.leaf(
        "SuccessorInsurerNumber",
        &answer.successor.as_ref().map(|s| s.insurer.to_string()).unwrap_or_default(),
    );
    x.leaf("DeclarationId", &answer.declaration.map(|d| d.to_string()).unwrap_or_default());
    x.leaf("AnswerHash", &shikaku_core::hex::encode(&answer.hash().0));
    x.close("ShikakuExtension");
}

/// A request file as a receipt computer writes one (UTF-8): the service date, the client's
/// file id, what is asked and the consent flag when given — what [`parse_request`] reads.
pub fn request_xml(
    kind: &RequestKind,
    service_date: Date,
    file_id: &str,
    consent: Option<bool>,
) -> String {
    let mut x = Xml { out: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n".into(), depth: 0 };
    x.open("XmlMsg");
    x.open("MessageHeader");
    x.leaf("QualificationConfirmationDate", &date8(service_date));
    x.leaf("ArbitraryFileIdentifier", file_id);
    x.close("MessageHeader");
    x.open("MessageBody");
    x.open("QualificationConfirmSearchInfo");
    match kind {
        RequestKind::Card(token) => x.leaf("ShikakuCardToken", &token.to_string()),
        RequestKind::CardData { key, birth } => {
            // A 6-digit national health insurance number padded to 8, as the real one is.
            x.leaf("InsurerNumber", &format!("{:>8}", key.insurer.to_string()));
            x.leaf("InsuredCardSymbol", &key.symbol);
            x.leaf("InsuredIdentificationNumber", &key.number);
            x.leaf("InsuredBranchNumber", &format!("{:02}", key.branch));
            x.leaf("Birthdate", &date8(*birth));
        }
    }
    if let Some(given) = consent {
        x.leaf("LimitApplicationCertificateRelatedConsFlg", if given { "1" } else { "0" });
    }
    x.close("QualificationConfirmSearchInfo");
    x.close("MessageBody");
    x.close("XmlMsg");
    x.out
}

/// The answer file's name for a request file's: the last `req` becomes `res`
/// (`OQSmuimm01req_…xml` → `OQSmuimm01res_…xml`), or `_res` goes before the extension.
pub fn answer_name(request_name: &str) -> String {
    if let Some(at) = request_name.rfind("req") {
        return format!("{}res{}", &request_name[..at], &request_name[at + 3..]);
    }
    match request_name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}_res.{ext}"),
        None => format!("{request_name}_res"),
    }
}
