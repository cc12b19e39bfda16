"""Word lists of the second held-out generator: people's names, organisations, address ranges, everyday
vocabulary, and the Python APIs ordinary users ask about most. Written for this generator (invented
organisation names; address prefixes chosen to look like residential, mobile, business and cloud ranges).
"""

from __future__ import annotations

FIRST = (
    "james", "maria", "wei", "aisha", "lucas", "sofia", "arjun", "emma", "mateo", "yuki", "olga", "kwame",
    "lena", "omar", "chloe", "diego", "hana", "ivan", "nora", "samir", "grace", "tomas", "mei", "felix",
    "amara", "jonas", "leila", "ravi", "elena", "kofi", "sara", "noah", "ines", "hugo", "zoe", "karan",
    "maya", "ali", "julia", "theo", "anya", "bruno", "fatima", "liam", "rosa", "kenji", "eva", "dmitri",
    "priya", "marco", "ben", "lucia", "tariq", "ada", "oscar", "nadia", "pedro", "ingrid", "chen", "malik",
)  # fmt: skip
LAST = (
    "smith", "garcia", "chen", "okafor", "silva", "muller", "kim", "novak", "patel", "rossi", "nguyen",
    "kowalski", "haddad", "tanaka", "johansson", "mendes", "ivanova", "obrien", "costa", "schmidt", "sato",
    "fischer", "lopez", "ahmed", "dubois", "yilmaz", "andersen", "moreau", "reyes", "kumar", "hughes", "park",
    "weber", "santos", "clarke", "horvat", "lindqvist", "mbeki", "varga", "wright", "bauer", "romero",
)  # fmt: skip
ADJ = ("quiet", "blue", "lucky", "rusty", "sunny", "brave", "little", "odd", "swift", "cosmic", "mellow",
       "wild", "salty", "lazy", "north", "tiny")  # fmt: skip
NOUN = ("fox", "otter", "pixel", "maple", "comet", "falcon", "panda", "cactus", "river", "moth", "badger",
        "koi", "lark", "tiger", "nova", "byte", "kiwi", "owl")  # fmt: skip

COMPANIES = (
    "Northbeam Logistics", "Tallgrass Health", "Quillon Software", "Brightpath Learning", "Ferrous Analytics",
    "Kestrel Commerce", "Bluefin Travel", "Copperleaf Finance", "Orchard Retail", "Silverline Telecom",
    "Mosaic Media", "Pinecrest Insurance", "Granite Cloud", "Driftwood Games", "Lumio Home", "Vantor Systems",
    "Elmstead Legal", "Corvid Security", "Saltmarsh Foods", "Tidewater Energy", "Aldous Publishing",
    "Wrenfield Bank", "Halcyon Apps", "Juniper Fleet",
)  # fmt: skip
UNIVERSITIES = ("Eastmoor University", "Halvard Institute of Technology", "Linden State University",
                "Valbonne University")  # fmt: skip
# organisations some campaigns register under (they look like any other customer)
FRONT_ORGS = ("Quantile Research Group", "Studyloop Inc", "Lattice Data Services", "Harrowgate Freight",
              "Meadowlark Insights")  # fmt: skip

SERVICE = {
    "support_bot": ("support", "helpdesk", "chat"),
    "batch_summarizer": ("digest", "reports", "summaries"),
    "eval_harness": ("eval", "bench", "evals"),
    "translation_pipeline": ("l10n", "i18n", "translate"),
    "rag_app": ("docs-assist", "search", "kb"),
    "wrapper_product": ("app", "prod", "backend"),
    "data_labeller": ("labeling", "tagger", "annotate"),
    "prompt_ab": ("prompt-lab", "experiments", "promptops"),
    "tool_agent": ("ci-bot", "devbot", "automation"),
}

# first octets of consumer ISP ranges (the second octet is drawn)
RESIDENTIAL_A = (24, 67, 68, 69, 71, 73, 75, 76, 86, 90, 92, 94, 98, 109, 81, 82, 87, 79, 88, 177, 179, 187,
                 189, 201, 49, 110, 114, 118, 121, 122, 124, 58, 60, 1, 36, 39, 42, 101, 106, 112, 115,
                 117, 223, 41, 105, 197, 31, 37, 46, 78)  # fmt: skip
# carrier NAT pools: a few /24s that many subscribers share
MOBILE_24 = ("172.56.18", "172.58.91", "174.205.4", "100.36.2", "31.94.12", "46.114.88", "49.96.210",
             "117.200.64", "37.166.40", "92.40.190")  # fmt: skip
# business broadband: offices, campuses, schools
BUSINESS_A = (12, 38, 63, 64, 65, 66, 70, 80, 83, 84, 85, 89, 93, 128, 129, 130, 131, 137, 141, 155,
              193, 194, 195, 212, 213, 217)  # fmt: skip
# cloud ranges (first two octets): big providers' compute
CLOUD_16 = ("3.85", "3.120", "18.204", "18.117", "34.82", "34.107", "35.190", "35.224", "52.14", "52.47",
            "54.163", "54.201", "20.42", "20.101", "40.76", "13.52", "44.199", "104.196")  # fmt: skip
# hosting providers and VPS shops (first two octets)
HOSTING_16 = ("45.76", "45.77", "95.216", "135.181", "65.108", "51.38", "51.75", "146.59", "159.89",
              "167.99", "134.209", "139.59", "178.128", "188.166", "5.161", "185.220", "193.29", "194.61",
              "91.121", "23.94")  # fmt: skip
# exits of a popular commercial VPN (strangers share them)
VPN_EXITS = ("185.159.157.12", "185.159.157.40", "185.159.158.7", "146.70.117.22", "146.70.117.93",
             "149.88.20.31", "149.88.20.77", "37.19.200.140", "37.19.200.161", "156.146.62.3",
             "156.146.62.45", "212.102.40.218", "89.187.180.14", "138.199.7.230", "79.127.136.9")  # fmt: skip

# well-known Python APIs, the head of what ordinary users ask about (only those the world knows are used)
COMMON_APIS = (
    "json.dumps", "json.loads", "os.path.join", "os.path.exists", "os.listdir", "os.getcwd", "re.compile",
    "re.search", "re.sub", "re.findall", "math.sqrt", "random.choice", "random.shuffle", "random.randint",
    "collections.Counter", "collections.defaultdict", "collections.namedtuple", "shutil.rmtree",
    "shutil.copy", "textwrap.dedent", "statistics.mean", "copy.deepcopy", "hashlib.sha256", "uuid.uuid4",
    "time.sleep", "time.time", "glob.glob", "subprocess.run", "logging.getLogger", "pickle.dumps",
    "threading.Thread", "argparse.ArgumentParser", "datetime.datetime", "itertools.chain",
    "functools.lru_cache", "csv.reader", "os.makedirs", "sys.exit", "pathlib.Path", "itertools.product",
)  # fmt: skip

LANGUAGES = ("German", "French", "Spanish", "Japanese", "Portuguese (Brazil)", "Italian", "Korean", "Dutch",
             "Polish", "Turkish", "Simplified Chinese", "Swedish")  # fmt: skip
CITIES = ("Lisbon", "Kyoto", "Mexico City", "Cape Town", "Reykjavik", "Hanoi", "Montreal", "Edinburgh",
          "Istanbul", "Buenos Aires", "Seoul", "Marrakesh", "Vienna", "Bangalore", "Melbourne")  # fmt: skip
TOPICS = ("autumn", "a rainy commute", "my grandmother's garden", "the first snow", "coffee", "old trains",
          "the ocean at night", "moving to a new city", "a lost cat", "mountains")  # fmt: skip
FOODS = ("chickpeas", "spinach", "leftover rice", "eggs", "feta", "sweet potatoes", "lentils", "tofu",
         "zucchini", "canned tuna", "mushrooms", "black beans")  # fmt: skip
PAIRS = (("a virus", "a bacterium"), ("weather", "climate"), ("a Roth IRA", "a traditional IRA"),
         ("baking soda", "baking powder"), ("latitude", "longitude"), ("a list", "a tuple in Python"),
         ("RAM", "storage"), ("an LLC", "a sole proprietorship"), ("espresso", "drip coffee"),
         ("HTTP", "HTTPS"), ("affect", "effect"), ("a crocodile", "an alligator"))  # fmt: skip
CONCEPTS = ("inflation", "compound interest", "how vaccines work", "black holes", "the stock market",
            "photosynthesis", "recursion", "how GPS works", "blockchain", "the immune system",
            "machine learning", "why the sky is blue", "jet lag", "how a mortgage works")  # fmt: skip
RELATIONS = ("landlord", "manager", "neighbour", "team", "professor", "sister", "client", "coach")
EVENTS = ("a broken heater", "taking Friday off", "the project delay", "a noisy party",
          "missing the deadline", "the team dinner", "a late payment",
          "rescheduling our meeting")  # fmt: skip
TONES = ("polite", "friendly", "firm", "apologetic", "formal", "short", "warm", "confident")
BOOK_GENRES = ("science fiction", "mystery", "historical fiction", "fantasy", "non-fiction about history",
               "poetry", "thriller", "memoir")  # fmt: skip
CHORES = ("get rid of fruit flies", "fix a squeaky door", "clean a cast iron pan", "unclog a drain",
          "remove a coffee stain", "keep basil alive", "reset my router", "iron a shirt quickly")  # fmt: skip
HOBBY_THINGS = ("podcast", "bakery", "cat", "fantasy football team", "book club", "band", "hiking group",
                "home server", "sourdough starter")  # fmt: skip
ERRORS = ("KeyError", "TypeError: 'NoneType' object is not subscriptable",
          "IndexError: list index out of range",
          "ValueError: invalid literal for int() with base 10", "FileNotFoundError", "AttributeError",
          "UnicodeDecodeError", "RecursionError: maximum recursion depth exceeded",
          "ModuleNotFoundError", "json.decoder.JSONDecodeError")  # fmt: skip
DEV_TASKS = ("read a CSV file and sum a column", "retry a failed HTTP request with backoff",
             "parse command line arguments", "merge two dictionaries",
             "remove duplicates from a list but keep order",
             "walk a directory tree and find large files", "format a datetime as ISO 8601",
             "run a shell command and capture its output", "write a unit test for a function that raises",
             "read a big file line by line", "validate an email address", "flatten a nested list",
             "sort a list of dicts by a key", "cache the results of an expensive function",
             "download a file and show progress", "convert a JSON file to CSV",
             "schedule a function to run every minute", "hash a password safely")  # fmt: skip
PRODUCTS = ("bamboo cutting board", "wireless earbuds", "insulated water bottle", "standing desk",
            "linen duvet cover", "trail running shoes", "cast iron skillet", "mechanical keyboard",
            "kids' rain jacket", "ceramic planter", "noise-cancelling headphones", "yoga mat")  # fmt: skip
REVIEW_BITS = ("arrived two days late", "works exactly as described", "stopped working after a week",
               "the colour is different from the photos", "great value for the price",
               "customer service was rude",
               "the battery lasts forever", "smaller than I expected", "would buy again",
               "the instructions were confusing", "packaging was damaged", "my kids love it",
               "feels cheap", "five stars", "returned it", "decent but overpriced")  # fmt: skip
PROJECTS = ("a recipe recommender", "a study planner bot", "an expense tracker that reads receipts",
            "a museum audio guide", "a volunteer shift matcher", "a plant care assistant",
            "a code review helper", "a travel itinerary builder", "an accessibility checker for web pages",
            "a podcast summariser")  # fmt: skip
