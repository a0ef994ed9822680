// whisper-api's web page in the reader's language: every string of the page is in STRINGS,
// one column per language (English and Russian today; a language is one more column).
// The static page is translated by selector (index.html stays plain HTML); app.js asks t().
"use strict";

const LANG_KEY = "whisper-api.lang";
const LANGUAGES = { en: "English", ru: "Русский" };

// The static page: CSS selector -> text (of a label that wraps its control: the first text node).
const PAGE = {
  "#sign-out": { en: "Sign out", ru: "Выйти" },
  "#sign-in-title": { en: "Sign in", ru: "Вход" },
  "label[for=api-key]": { en: "API key", ru: "API-ключ" },
  "#sign-in-form button[type=submit]": { en: "Sign in", ru: "Войти" },
  "#sign-in-form .hint": {
    en: "The key is traded for a token that this tab keeps until you close it.",
    ru: "Ключ обменивается на токен, который эта вкладка хранит, пока вы её не закроете.",
  },
  "#new-job-title": { en: "Transcribe a recording", ru: "Расшифровать запись" },
  "#drop p:first-child": { en: "Drop an audio or video file here, or", ru: "Перетащите сюда аудио- или видеофайл или" },
  "#file-name": { en: "No file chosen.", ru: "Файл не выбран." },
  "label.file-button": { en: "Choose a file", ru: "Выбрать файл" },
  "#model-label": { en: "Model", ru: "Модель" },
  "#language-label": { en: "Language", ru: "Язык" },
  "#task-label": { en: "Task", ru: "Задача" },
  "#task option[value=transcribe]": { en: "Transcribe", ru: "Расшифровать" },
  "#task option[value=translate]": { en: "Translate to English", ru: "Перевести на английский" },
  "#words-label": { en: " Word timings", ru: " Время каждого слова" },
  "#forget-label": { en: " Delete the audio when done", ru: " Удалить аудио после расшифровки" },
  "#diarize-label": { en: " Speakers", ru: " Говорящие" },
  "#speaker-count-label": { en: "How many speakers ", ru: "Сколько говорящих " },
  "#start": { en: "Start", ru: "Начать" },
  "#record": { en: "Record", ru: "Записать" },
  "label[for=upload-bar]": { en: "Upload", ru: "Загрузка" },
  "label[for=job-bar]": { en: "Job", ru: "Задание" },
  "#jobs-title": { en: "Your jobs", ru: "Ваши задания" },
  "#refresh": { en: "Refresh", ru: "Обновить" },
  "#more": { en: "Older jobs", ru: "Более ранние задания" },
  "#close-reader": { en: "Close", ru: "Закрыть" },
  "#no-audio": {
    en: "The audio is not in this tab and no longer stored; the transcript is below.",
    ru: "Аудио нет в этой вкладке и оно больше не хранится; расшифровка ниже.",
  },
  // table headings, in order
  "th.file": { en: "File", ru: "Файл" },
  "th.status": { en: "Status", ru: "Статус" },
  "th.audio": { en: "Audio", ru: "Аудио" },
  "th.created": { en: "Created", ru: "Создано" },
  "th.actions": { en: "Actions", ru: "Действия" },
};

// What app.js shows: key -> text, with {name} placeholders.
const STRINGS = {
  "placeholder.language": { en: "detect", ru: "определить" },
  "file.none": { en: "No file chosen.", ru: "Файл не выбран." },
  "file.first": { en: "Choose or drop a file first.", ru: "Сначала выберите или перетащите файл." },
  "model.default": { en: "server default", ru: "по умолчанию" },
  "key.refused": { en: "That API key was not accepted.", ru: "Этот API-ключ не принят." },
  "upload.sent": { en: "{sent} of {total} MB", ru: "{sent} из {total} МБ" },
  "upload.done": { en: "uploaded", ru: "загружено" },
  "job.failed": { en: "The job failed: {reason}", ru: "Задание не выполнено: {reason}" },
  "job.processing": { en: "processing, {pct}%", ru: "обработка, {pct}%" },
  "status.pending": { en: "pending", ru: "в очереди" },
  "status.processing": { en: "processing", ru: "обработка" },
  "status.completed": { en: "completed", ru: "готово" },
  "status.failed": { en: "failed", ru: "ошибка" },
  "status.canceled": { en: "canceled", ru: "отменено" },
  "action.open": { en: "Open", ru: "Открыть" },
  "action.download": { en: "Download", ru: "Скачать" },
  "action.cancel": { en: "Cancel", ru: "Отменить" },
  "action.delete": { en: "Delete", ru: "Удалить" },
  "action.retry": { en: "Retry", ru: "Повторить" },
  "aria.open": { en: "Open the transcript of {name}", ru: "Открыть расшифровку {name}" },
  "aria.format": { en: "Download format for {name}", ru: "Формат скачивания для {name}" },
  "aria.download": { en: "Download the transcript of {name}", ru: "Скачать расшифровку {name}" },
  "aria.cancel": { en: "Cancel the job for {name}", ru: "Отменить задание для {name}" },
  "aria.delete": { en: "Delete the job for {name}", ru: "Удалить задание для {name}" },
  "aria.retry": { en: "Run the job for {name} again", ru: "Запустить задание для {name} ещё раз" },
  "aria.retry-model": { en: "Model for the retry of {name}", ru: "Модель для повтора {name}" },
  "confirm.delete": {
    en: "Delete the job for {name}? Its transcript and audio are removed for good.",
    ru: "Удалить задание для {name}? Расшифровка и аудио будут удалены безвозвратно.",
  },
  "retry.no-audio": {
    en: "The audio of {name} is no longer stored; upload the file again to retry.",
    ru: "Аудио {name} больше не хранится; чтобы повторить, загрузите файл снова.",
  },
  "error.401": {
    en: "You are signed out: the key was refused or the session expired. Sign in again.",
    ru: "Вы вышли: ключ не принят или сессия истекла. Войдите снова.",
  },
  "error.413": { en: "The file is too large for this server. {detail}", ru: "Файл слишком велик для этого сервера. {detail}" },
  "error.415": { en: "That file is not audio this server can read. {detail}", ru: "Этот файл — не аудио, которое сервер умеет читать. {detail}" },
  "error.422": { en: "Please check the form: {detail}", ru: "Проверьте форму: {detail}" },
  "error.429": { en: "Too many requests for this key right now.{wait} {detail}", ru: "Слишком много запросов с этим ключом.{wait} {detail}" },
  "error.503": { en: "The service is unavailable at the moment.{wait}", ru: "Сервис сейчас недоступен.{wait}" },
  "error.0": { en: "The server could not be reached. {detail}", ru: "Сервер недоступен. {detail}" },
  "error.other": { en: "The request failed (HTTP {status}): {detail}", ru: "Запрос не выполнен (HTTP {status}): {detail}" },
  "error.wait": { en: " Try again in {seconds} s.", ru: " Повторите через {seconds} с." },
  "error.shortly": { en: " Try again shortly.", ru: " Повторите чуть позже." },
  "record.start": { en: "Record", ru: "Записать" },
  "record.stop": { en: "Stop and save", ru: "Остановить и сохранить" },
  "record.unavailable": {
    en: "Live transcription is not available on this server.",
    ru: "Живая расшифровка на этом сервере недоступна.",
  },
  "ui.language": { en: "Page language", ru: "Язык страницы" },
};

// Languages offered in the form's list; their names come from the browser (Intl.DisplayNames).
const FORM_LANGUAGES = ["en", "ru", "de", "fr", "es", "it", "pt", "uk", "pl", "nl", "tr", "ja", "zh", "ko", "ar"];

function uiLanguage() {
  const chosen = localStorage.getItem(LANG_KEY);
  if (chosen && LANGUAGES[chosen]) return chosen;
  return (navigator.language || "en").toLowerCase().startsWith("ru") ? "ru" : "en";
}

// A string in the page's language, with {name} placeholders filled from vars.
function t(key, vars = {}) {
  const entry = STRINGS[key];
  if (!entry) return key;
  const text = entry[uiLanguage()] || entry.en;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : ""));
}

function languageNames(lang) {
  try { return new Intl.DisplayNames([lang], { type: "language" }); } catch (_) { return null; }
}

// What the form's language field holds as a code: a code as is, or a language's name in any
// of the page's languages ("Russian", "русский", "Deutsch" -> its code).
function languageCode(value) {
  const wanted = value.trim().toLowerCase();
  if (!wanted) return "";
  for (const ui of [...Object.keys(LANGUAGES), ...FORM_LANGUAGES]) {
    const names = languageNames(ui);
    if (!names) continue;
    for (const code of FORM_LANGUAGES) {
      if ((names.of(code) || "").toLowerCase() === wanted) return code;
    }
  }
  return value.trim();
}

function setText(element, text) {
  // A label that wraps its control: replace its first text node only.
  const node = [...element.childNodes].find((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
  if (element.children.length && node) node.textContent = text;
  else if (element.children.length) element.prepend(text);
  else element.textContent = text;
}

function translatePage() {
  const lang = uiLanguage();
  document.documentElement.lang = lang;
  for (const [selector, entry] of Object.entries(PAGE)) {
    for (const element of document.querySelectorAll(selector)) setText(element, entry[lang] || entry.en);
  }
  const language = document.getElementById("language");
  if (language) language.placeholder = t("placeholder.language");
  const names = languageNames(lang);
  const list = document.getElementById("languages");
  if (list && names) {
    list.replaceChildren(...FORM_LANGUAGES.map((code) => new Option(names.of(code), code)));
  }
  const picker = document.getElementById("ui-lang");
  if (picker) { picker.value = lang; picker.setAttribute("aria-label", t("ui.language")); }
}

function addLanguagePicker() {
  const picker = document.createElement("select");
  picker.id = "ui-lang";
  picker.replaceChildren(...Object.entries(LANGUAGES).map(([code, name]) => new Option(name, code)));
  picker.addEventListener("change", () => {
    localStorage.setItem(LANG_KEY, picker.value);
    translatePage();
    document.dispatchEvent(new Event("whisper-api:language"));
  });
  document.querySelector(".bar").append(picker);
}

document.addEventListener("DOMContentLoaded", () => {
  const labelled = [["model", "model-label"], ["language", "language-label"], ["task", "task-label"],
    ["words", "words-label"], ["forget-audio", "forget-label"], ["diarize", "diarize-label"],
    ["speaker-count", "speaker-count-label"]];
  for (const [id, text] of labelled) {
    const label = document.getElementById(id) && document.getElementById(id).closest("label");
    if (label) label.id = text;
  }
  const headings = document.querySelectorAll("#jobs thead th");
  ["file", "status", "audio", "created", "actions"].forEach((name, i) => headings[i] && headings[i].classList.add(name));
  addLanguagePicker();
  translatePage();
});

// A heading of the static page in the page's language (for the job cards' labels).
function tPage(selector) {
  const entry = PAGE[selector];
  return entry ? entry[uiLanguage()] || entry.en : selector;
}
