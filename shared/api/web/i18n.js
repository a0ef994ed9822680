// whisper-api's web page in the reader's language. Every string of the page is in one JSON file
// per language, i18n.<lang>.json (English and Russian today; a language is one more file and one
// more entry in LANGUAGES), of two tables:
//   "page":    the static page, CSS selector -> text (of a label that wraps its control: the first
//              text node); index.html stays plain HTML and is translated by selector;
//   "strings": what app.js shows, key -> text with {name} placeholders, asked for with t().
// The server puts the files into the page (shared.api.webpage), as the data block #i18n.
"use strict";

const LANG_KEY = "whisper-api.lang";
const LANGUAGES = { en: "English", ru: "Русский" };
// Language -> its file's tables.
const TABLES = JSON.parse(document.getElementById("i18n").textContent);

// The text of ``key`` in ``table`` ("page" or "strings") in the page's language, else in English.
function lookup(table, key) {
  return (TABLES[uiLanguage()] || TABLES.en)[table][key] || TABLES.en[table][key];
}

// Languages offered in the form's list; their names come from the browser (Intl.DisplayNames).
const FORM_LANGUAGES = ["en", "ru", "de", "fr", "es", "it", "pt", "uk", "pl", "nl", "tr", "ja", "zh", "ko", "ar"];

function uiLanguage() {
  const chosen = localStorage.getItem(LANG_KEY);
  if (chosen && LANGUAGES[chosen]) return chosen;
  return (navigator.language || "en").toLowerCase().startsWith("ru") ? "ru" : "en";
}

// A string in the page's language, with {name} placeholders filled from vars.
function t(key, vars = {}) {
  const text = lookup("strings", key);
  if (!text) return key;
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
  for (const selector of Object.keys(TABLES.en.page)) {
    for (const element of document.querySelectorAll(selector)) setText(element, lookup("page", selector));
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
  return lookup("page", selector) || selector;
}
