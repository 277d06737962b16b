"""Seed users that look like a real user base: varied names, emails, domains and sign-up dates.

Names and surnames come from short lists of common ones in several languages,
drawn with Zipf-like weights (a few are very common, most are rare), so that
a fragment such as "son" or "gmail" matches many users and "okaf" a few, as
in a real directory. The same seed gives the same users on every run.
"""

from __future__ import annotations

import random
import unicodedata
from datetime import UTC, datetime, timedelta
from itertools import accumulate

FIRST_NAMES = """
James Mary John Patricia Robert Jennifer Michael Linda David Elizabeth William Barbara Richard
Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty
Anthony Sandra Mark Margaret Donald Ashley Steven Kimberly Andrew Emily Paul Donna Joshua
Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah Timothy Stephanie Ronald
Rebecca Jason Laura Edward Helen Jeffrey Sharon Ryan Cynthia Jacob Kathleen Gary Amy Nicholas
Angela Eric Anna Jonathan Ruth Stephen Brenda Larry Pamela Justin Nicole Scott Katherine
Brandon Samantha Benjamin Christine Samuel Emma Gregory Catherine Alexander Debra Frank Rachel
Patrick Carolyn Raymond Janet Jack Maria Dennis Heather Jerry Diane Tyler Olivia Aaron Julie
José Zoë Chloé Björn Søren Jürgen Siobhán Małgorzata Łukasz François Hélène Ana Luis Carmen
Javier Lucía Mateo Sofía Giulia Marco Francesca Luca Hans Greta Lars Ingrid Sven Astrid Olga
Ivan Dmitri Natalia Yuki Haruto Sakura Hiroshi Wei Jing Min Hao Priya Arjun Aisha Omar Fatima
Yusuf Chinedu Ngozi Kwame Ama Tariq Leila Mehmet Elif Noa Avi Tomasz Katarzyna Pieter Annelies
""".split()  # noqa: SIM905 - a list literal this long is harder to read

LAST_NAMES = """
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips
Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers
Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson
Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo
Sanders Patel Myers Long Ross Foster Jimenez Müller Schmidt Schneider Fischer Weber Meyer
Wagner Becker Hoffmann Schäfer Kowalski Nowak Wiśniewski Wójcik Kowalczyk Rossi Russo Ferrari
Esposito Bianchi Romano Colombo Dubois Moreau Laurent Lefèvre Girard Bernard Silva Santos
Oliveira Souza Pereira Costa Park Choi Jung Kang Tanaka Suzuki Watanabe Sato Takahashi Ito
Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Singh Kumar Sharma Gupta Reddy Iyer Okafor
Adeyemi Mensah Okonkwo Boateng Haddad Khalil Nasser Cohen Levi Friedman Mizrahi O'Brien
Sullivan Walsh Byrne Novak Horvat Jensen Nielsen Hansen Andersson Johansson Karlsson Nilsson
Larsen Ivanov Petrov Smirnov Kuznetsov Popov Yilmaz Kaya Demir Vandenberg Jansen DeVries
Bakker Visser Janssens Peeters Papadopoulos Nikolaidis Virtanen Korhonen Nieminen
""".split()  # noqa: SIM905 - a list literal this long is harder to read

# Large providers first; company domains below share what is left.
PROVIDERS = {
    "gmail.com": 30,
    "yahoo.com": 7,
    "outlook.com": 7,
    "hotmail.com": 5,
    "icloud.com": 4,
    "proton.me": 1,
    "gmx.de": 1,
    "web.de": 1,
    "orange.fr": 1,
    "qq.com": 1,
}
COMPANY_WORDS = """
acme globex initech umbrella stark wayne hooli vandelay wonka cyberdyne soylent tyrell aperture
massive oscorp gringotts monarch nakatomi dunder prestige sterling pied piper blue river north
star bright cloud data forge works labs systems solutions digital logic nova apex summit pioneer
atlas quantum vertex harbor maple cedar granite silver iron falcon orbit pixel signal
""".split()  # noqa: SIM905 - a list literal this long is harder to read
TLDS = ["com", "com", "com", "io", "net", "org", "co.uk", "de", "fr", "nl"]
COMPANY_SHARE = 41  # percent of users on a company domain
YEARS = 3  # sign-ups spread over this many years before the run


def zipf_weights(count: int, exponent: float = 0.9) -> list[float]:
    return list(accumulate(1 / (rank + 1) ** exponent for rank in range(count)))


def ascii_of(text: str) -> str:
    """A name as it would appear in an email: accents dropped, letters only, lower case."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum()).lower() or "x"


def people(count: int, *, seed: int = 12) -> list[tuple[str, str, datetime]]:
    """`count` users as (name, email, created_at), in sign-up order, emails unique in any case."""
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
    firsts = FIRST_NAMES
    lasts = LAST_NAMES
    first_weights = zipf_weights(len(firsts))
    last_weights = zipf_weights(len(lasts))
    companies = [
        f"{a}{b}.{rng.choice(TLDS)}" for a in COMPANY_WORDS for b in COMPANY_WORDS if a != b
    ]
    rng.shuffle(companies)
    company_weights = zipf_weights(len(companies), 1.1)
    providers = list(PROVIDERS)
    provider_weights = list(accumulate(PROVIDERS.values()))
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=365 * YEARS)
    span = (now - start).total_seconds()
    # Growth: more sign-ups recently, as a service gains users.
    offsets = sorted(span * rng.random() ** 0.7 for _ in range(count))
    seen: set[str] = set()
    rows: list[tuple[str, str, datetime]] = []
    for offset in offsets:
        first = rng.choices(firsts, cum_weights=first_weights)[0]
        last = rng.choices(lasts, cum_weights=last_weights)[0]
        if rng.randrange(100) < COMPANY_SHARE:
            domain = rng.choices(companies, cum_weights=company_weights)[0]
        else:
            domain = rng.choices(providers, cum_weights=provider_weights)[0]
        given, family = ascii_of(first), ascii_of(last)
        shape = rng.randrange(8)
        local = (
            f"{given}.{family}",
            f"{given}{family}",
            f"{given[0]}{family}",
            f"{given}_{family}",
            f"{given}.{family}{rng.randrange(100)}",
            f"{given}{rng.randrange(1950, 2010)}",
            f"{family}.{given}",
            f"{given[0]}.{family}{rng.randrange(1000)}",
        )[shape]
        if rng.randrange(10) == 0:  # some people write their address capitalised
            local = local.capitalize()
        email = f"{local}@{domain}"
        while email.lower() in seen:
            email = f"{local}{rng.randrange(10_000)}@{domain}"
        seen.add(email.lower())
        middle = f" {rng.choice(firsts)[0]}." if rng.randrange(5) == 0 else ""
        rows.append((f"{first}{middle} {last}", email, start + timedelta(seconds=offset)))
    return rows
