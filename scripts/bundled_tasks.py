# ruff: noqa: E501
"""Hand-written content for the instruction-following categories of the bundled data.

Written for this project. One item per line, fields separated by `` | ``.
"""

# task | all-lowercase answer | words to capitalise in the rejected version (comma-separated)
LOWERCASE = """
Describe autumn in one sentence. | leaves turn red and gold, and the evenings smell of wood smoke. |
Name the capital of France and one famous landmark there. | the capital of france is paris, and the eiffel tower is its best-known landmark. | france, paris, eiffel, tower
What do you like to eat for breakfast? | i usually have porridge with berries and a cup of green tea. | i
Give one tip for staying focused while studying. | put your phone in another room and work in short, timed blocks. |
Which ocean lies between Europe and North America? | the atlantic ocean lies between europe and north america. | atlantic, ocean, europe, north, america
Who wrote Hamlet? | hamlet was written by william shakespeare around the year 1600. | hamlet, william, shakespeare
Describe a rainy Monday morning. | grey clouds, wet umbrellas and a slow bus make monday mornings feel very long. | monday
Suggest a name for a friendly robot. | how about bolt? it sounds quick, cheerful and easy to remember. | bolt
What is your favourite season and why? | i love spring because the days get longer and the parks fill with flowers. | i
Give a short motto for a bakery. | fresh bread, warm hearts, and a smile every single morning. |
Where is the Great Barrier Reef? | the great barrier reef lies off the coast of queensland, in australia. | great, barrier, reef, queensland, australia
Write a one-line greeting for a birthday card. | happy birthday! wishing you a year full of laughter, friends and cake. |
What is a good pet for a small flat? | a cat or a pair of guinea pigs can be very happy in a small flat. |
Name two planets in our solar system. | mars and jupiter are two of the planets that orbit our sun. | mars, jupiter
Describe the taste of a lemon. | a lemon tastes sharp, sour and bright, with a slightly bitter peel. |
Recommend a city to visit in Italy. | i'd recommend florence for its art, its food and its beautiful old bridges. | i'd, florence
Tell me something about the Nile. | the nile flows north through egypt and empties into the mediterranean sea. | nile, egypt, mediterranean
Say hello to a new classmate. | hi, i'm sam. welcome to the class, and let me know if you need anything. | i'm, sam
Write a tiny poem about the sea. | the sea hums softly, silver waves roll in, and the tide keeps time. |
What do bees make? | bees make honey from the nectar they collect from flowers. |
Describe your ideal weekend. | a long walk in the hills on saturday, then a lazy sunday with books and pancakes. | saturday, sunday
Give a reason to drink enough water. | staying hydrated helps you think clearly and keeps your energy up all day. |
Name a famous scientist and what she studied. | marie curie studied radioactivity and won two nobel prizes. | marie, curie, nobel
What colour is the sky on a clear day? | on a clear day the sky is a bright, pale blue from edge to edge. |
Suggest a board game for a family evening. | try ticket to ride; it is easy to learn and fun for all ages. | ticket, ride
Describe a busy train station. | crowds hurry past, announcements echo overhead, and coffee smells drift from the kiosks. |
Which language is spoken in Mexico? | most people in mexico speak spanish as their first language. | mexico, spanish
Give one idea for a rainy-day activity with kids. | build a blanket fort in the living room and read stories inside it. |
What month comes after March? | april comes right after march, and it often brings spring showers. | april, march
Describe the smell of fresh bread. | warm, yeasty and slightly sweet, like a cosy kitchen on a cold day. |
Who painted The Starry Night? | the starry night was painted by vincent van gogh in 1889. | starry, night, vincent, gogh
Say thank you to a helpful neighbour. | thank you so much for watering my plants while i was away last week! | i
What is the tallest animal? | the giraffe is the tallest animal, reaching almost six metres. |
Write a slogan for a bike shop. | two wheels, endless roads, and we keep them rolling for you. |
Where do penguins mostly live? | most penguins live in the southern hemisphere, especially around antarctica. | antarctica
Describe a snowy village. | quiet lanes, white rooftops and smoke curling from every chimney. |
Recommend a fruit that is high in vitamin C. | oranges are a great source of vitamin c, and so are kiwis. | c
What is the capital of Germany? | berlin is the capital of germany and also its largest city. | berlin, germany
Give advice to someone starting a new hobby. | start small, be patient with yourself, and enjoy the process more than the result. |
What do you call a baby kangaroo? | a baby kangaroo is called a joey, and it lives in its mother's pouch. |
Describe a campfire at night. | orange sparks rise into the dark while everyone huddles close for warmth. |
Name a river that flows through London. | the thames flows right through the middle of london. | thames, london
How do you feel on a sunny day? | i feel cheerful and full of energy when the sun is out. | i
Suggest a short trip from Paris by train. | a train to brussels takes under two hours, and the chocolate is worth it. | brussels
What is your favourite book? | i really enjoy the hobbit by tolkien; it is cosy and full of adventure. | i, hobbit, tolkien
Describe the moon on a clear night. | the moon hangs pale and round above the rooftops, bright enough to read by. |
Write a short note to a teacher. | thank you for your patience this year; your lessons made science fun. |
What is the largest country by area? | russia is the largest country in the world by area. | russia
"""

# question | concise answer | extra sentence (the rejected answer pads the concise one with it)
WORD_LIMIT = """
Why is the sky blue? | Air molecules scatter blue sunlight more than red light, so the sky looks blue. | This effect is called Rayleigh scattering, and it also explains why sunsets look orange and red.
What does a thermometer measure? | A thermometer measures temperature. | Some are digital, while older ones use mercury or coloured alcohol rising in a thin glass tube.
Why do we have seasons? | Earth's tilted axis changes how directly sunlight reaches each hemisphere during the year. | This is why summer in one hemisphere happens at the same time as winter in the other.
What is photosynthesis? | Plants use sunlight, water and carbon dioxide to make sugar and release oxygen. | It happens mostly in the leaves, inside tiny structures called chloroplasts that contain green chlorophyll.
How does a vaccine work? | It trains your immune system to recognise a germ so it can fight it faster. | Many vaccines contain a weakened or harmless piece of the germ, and some need booster doses.
What is inflation? | Inflation is a general rise in prices that reduces what money can buy. | Central banks often raise interest rates to slow it down when it climbs too quickly.
Why do cats purr? | Cats mostly purr when relaxed, but also to soothe themselves when stressed. | Scientists are still studying exactly how the sound is produced in the throat.
What is a noun? | A noun is a word that names a person, place, thing or idea. | Examples include teacher, city, chair and happiness, and nouns can be singular or plural.
Why is exercise good for you? | It strengthens your heart and muscles, improves sleep and lifts your mood. | Experts generally suggest about 150 minutes of moderate activity every week for adults.
What causes rain? | Water vapour cools and condenses into droplets, which fall once they grow heavy. | This is one part of the water cycle, which also includes evaporation and runoff into rivers.
What is a budget? | A budget is a plan for how you will spend and save money. | Many people use apps or simple spreadsheets to track their budget each month.
What do bees do for flowers? | Bees carry pollen between flowers, which helps plants make seeds and fruit. | Without bees, many crops such as apples and almonds would produce much less food.
Why do leaves change colour in autumn? | Trees stop making green chlorophyll, revealing yellow and orange pigments underneath. | Red colours come from new pigments that some trees make as the nights grow cooler.
What is gravity? | Gravity is the force that pulls objects with mass toward each other. | It keeps the Moon in orbit around Earth and makes dropped objects fall to the ground.
What is a healthy breakfast? | Porridge with fruit, or eggs on wholegrain toast, gives lasting energy. | Adding some protein in the morning can also help you feel full until lunch.
How do plants drink water? | Roots absorb water from the soil and carry it up through the stem. | The water then evaporates from tiny pores in the leaves in a process called transpiration.
What is recycling? | Recycling turns used materials like paper, glass and metal into new products. | It saves energy and raw materials and keeps a lot of waste out of landfill sites.
Why should I wear sunscreen? | Sunscreen protects your skin from UV rays that cause sunburn and skin cancer. | You should reapply it every two hours, and more often after swimming or sweating.
What does a librarian do? | A librarian helps people find books and information and looks after the collection. | Many librarians also run reading groups, teach research skills and help visitors with computers.
What is an email? | An email is a digital message sent between accounts over the internet. | Emails can include attachments such as photos or documents, and they usually arrive within seconds.
What is the job of the heart? | The heart pumps blood around the body, delivering oxygen and nutrients. | An adult heart beats roughly sixty to a hundred times per minute at rest.
What makes a good password? | A good password is long, unique and hard to guess. | Using a password manager makes it much easier to create and remember strong passwords.
Why do we sleep? | Sleep lets the body repair itself and helps the brain store memories. | Most adults need around seven to nine hours a night to feel properly rested.
What is a volcano? | A volcano is an opening in Earth's crust where molten rock escapes. | Some volcanoes erupt violently, while others release lava slowly over many years.
What is a map used for? | A map shows where places are and helps you plan routes. | Modern phone maps can also show live traffic, walking directions and nearby shops.
Why is reading useful? | Reading builds vocabulary, knowledge and concentration, and it can be relaxing. | Even fifteen minutes a day can make a noticeable difference over a whole year.
What is a democracy? | A democracy is a system where citizens choose their leaders in free elections. | Most democracies also protect rights such as free speech and a fair trial.
What is compost? | Compost is decayed plant and food waste that makes soil richer. | You can make it at home in a bin by mixing vegetable scraps with dry leaves.
Why do birds migrate? | Birds migrate to find food and safe places to breed as seasons change. | Some species fly thousands of kilometres each year, often following the same routes.
What is a fossil? | A fossil is the preserved remains or trace of an ancient living thing. | Most fossils form when remains are buried in sediment that slowly hardens into rock.
What does an architect do? | An architect designs buildings and plans how they will be built safely. | They work closely with engineers, builders and clients from the first sketch to completion.
Why do we need vitamins? | Vitamins help the body grow, heal and turn food into energy. | A varied diet with fruit, vegetables and whole grains usually provides enough of them.
What is a rainbow? | A rainbow forms when raindrops bend sunlight and split it into colours. | You usually see one when the sun is behind you and rain is falling in front of you.
What is the internet? | The internet is a global network that lets computers share information. | It began as a research project and now links billions of devices around the world.
What is a haiku? | A haiku is a short poem with three lines of five, seven and five syllables. | The form comes from Japan and often describes nature or a single moment in time.
What does a compass do? | A compass points north, helping you find your direction. | It works because its magnetic needle lines up with Earth's magnetic field.
Why do onions make you cry? | Cutting onions releases a gas that irritates your eyes and makes them water. | Chilling the onion first or using a very sharp knife can reduce the effect.
What is a metaphor? | A metaphor describes something by calling it something else, like calling time a thief. | It differs from a simile, which uses words such as like or as to compare things.
What is erosion? | Erosion is the slow wearing away of rock and soil by water, wind or ice. | Over millions of years it can carve huge valleys and canyons out of solid rock.
Why is the ocean salty? | Rivers carry dissolved minerals from rocks into the sea, where the salt builds up. | When seawater evaporates, the salt stays behind, so the oceans slowly became saltier.
What is a carbon footprint? | It is the total greenhouse gas emissions caused by a person, product or activity. | Flying, driving and eating a lot of red meat usually make a footprint much larger.
What does a pharmacist do? | A pharmacist prepares medicines and advises people on using them safely. | They can also answer questions about side effects and suggest treatments for minor illnesses.
What is a solar panel? | A solar panel turns sunlight into electricity using special cells. | Panels work best facing the sun without shade, and they need very little maintenance.
What is an allergy? | An allergy is the immune system overreacting to something usually harmless, like pollen. | Symptoms can include sneezing, itching or a rash, and severe reactions need urgent care.
Why do we brush our teeth? | Brushing removes plaque and food, preventing tooth decay and gum disease. | Dentists recommend brushing twice a day for two minutes with fluoride toothpaste.
What is a comet? | A comet is a ball of ice and dust that grows a glowing tail near the Sun. | Famous examples include Halley's Comet, which returns roughly every seventy-six years.
What is teamwork? | Teamwork is people cooperating and sharing tasks to reach a common goal. | Good teams communicate clearly, trust each other and make use of everyone's strengths.
What is an echo? | An echo is a sound that bounces off a surface and comes back to you. | You often hear echoes in caves, empty halls and between tall buildings or cliffs.
"""

# instruction | the JSON object the chosen answer returns
JSON_ITEMS = """
Give a JSON object with the keys "title" and "author" for the novel Pride and Prejudice. | {"title": "Pride and Prejudice", "author": "Jane Austen"}
Describe the planet Mars as a JSON object with the keys "name", "moons" and "rocky". | {"name": "Mars", "moons": 2, "rocky": true}
Create a JSON object for a user named Priya, aged 31, from Leeds, using the keys "name", "age" and "city". | {"name": "Priya", "age": 31, "city": "Leeds"}
Return a JSON object with the keys "red", "green" and "blue" for the RGB colour 255, 165, 0. | {"red": 255, "green": 165, "blue": 0}
Make a JSON object that lists the three primary colours of paint under the key "colours". | {"colours": ["red", "yellow", "blue"]}
Output a JSON object with the keys "city" and "country" for the location of the Eiffel Tower. | {"city": "Paris", "country": "France"}
Give a JSON object with the keys "celsius" and "fahrenheit" for the boiling point of water. | {"celsius": 100, "fahrenheit": 212}
Write a JSON object for a to-do item "buy milk" that is not done yet, with the keys "task" and "done". | {"task": "buy milk", "done": false}
Return JSON with the keys "element" and "symbol" for oxygen. | {"element": "oxygen", "symbol": "O"}
Produce a JSON object whose key "weekdays" holds the five weekday names from Monday to Friday. | {"weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]}
Give a JSON object with the keys "title", "pages" and "available" for the book "Lanterns of the North", 312 pages, in stock. | {"title": "Lanterns of the North", "pages": 312, "available": true}
Create a JSON object for a pancake recipe with the keys "name" and "ingredients", using flour, eggs and milk. | {"name": "pancakes", "ingredients": ["flour", "eggs", "milk"]}
Represent the point (3, 4) as a JSON object with the keys "x" and "y". | {"x": 3, "y": 4}
Return a JSON object with the keys "language" and "greeting" for saying hello in Spanish. | {"language": "Spanish", "greeting": "hola"}
Give a JSON object with the keys "animal" and "legs" for a spider. | {"animal": "spider", "legs": 8}
Make a JSON object with the keys "start" and "end" for a meeting from 09:00 to 10:30. | {"start": "09:00", "end": "10:30"}
Output a JSON object with the keys "product", "price" and "currency" for a coffee that costs 3.50 euros. | {"product": "coffee", "price": 3.5, "currency": "EUR"}
Write a JSON object with the keys "username" and "email" for the user lee_92 whose email is lee@example.com. | {"username": "lee_92", "email": "lee@example.com"}
Return a JSON object with the keys "continent" and "countries", listing three countries in South America. | {"continent": "South America", "countries": ["Brazil", "Peru", "Chile"]}
Give a JSON object with the keys "width", "height" and "area" for a 4 by 5 rectangle. | {"width": 4, "height": 5, "area": 20}
Create a JSON object with the keys "planet" and "order" giving Earth's position from the Sun. | {"planet": "Earth", "order": 3}
Produce a JSON object with the keys "question" and "answer" for 7 times 6. | {"question": "7 times 6", "answer": 42}
Return a JSON object with the keys "first" and "last" for the name Ada Lovelace. | {"first": "Ada", "last": "Lovelace"}
Make a JSON object whose key "vowels" lists the five English vowels. | {"vowels": ["a", "e", "i", "o", "u"]}
Give a JSON object with the keys "name", "species" and "age" for a three-year-old dog called Biscuit. | {"name": "Biscuit", "species": "dog", "age": 3}
Output a JSON object with the keys "from", "to" and "hours" for a two-hour train trip from Leeds to London. | {"from": "Leeds", "to": "London", "hours": 2}
Create a JSON object with the keys "day", "high" and "low" for a Tuesday forecast of 18 and 9 degrees. | {"day": "Tuesday", "high": 18, "low": 9}
Return a JSON object with the keys "word" and "letters" for the word banana and its letter count. | {"word": "banana", "letters": 6}
Give a JSON object with the keys "status" and "code" for a successful HTTP response. | {"status": "OK", "code": 200}
Write a JSON object with the keys "instrument" and "strings" for a standard guitar. | {"instrument": "guitar", "strings": 6}
Make a JSON object with the keys "team" and "players" for a team called Falcons with Sara, Tom and Ines. | {"team": "Falcons", "players": ["Sara", "Tom", "Ines"]}
Produce a JSON object with the keys "metres" and "centimetres" for a length of 2 metres. | {"metres": 2, "centimetres": 200}
Return a JSON object with the keys "country" and "capital" for Japan. | {"country": "Japan", "capital": "Tokyo"}
Give a JSON object whose key "primes" lists the first four prime numbers. | {"primes": [2, 3, 5, 7]}
Create a JSON object with the keys "event", "date" and "location" for a picnic on 2024-06-15 in Hyde Park. | {"event": "picnic", "date": "2024-06-15", "location": "Hyde Park"}
Output a JSON object with the keys "song" and "minutes" for a four-minute song called Morning Light. | {"song": "Morning Light", "minutes": 4}
Write a JSON object with the keys "fruit" and "colour" for a ripe banana. | {"fruit": "banana", "colour": "yellow"}
Return a JSON object with the keys "light" and "meaning" for a red traffic light. | {"light": "red", "meaning": "stop"}
Make a JSON object with the keys "name", "sides" and "regular" for a square. | {"name": "square", "sides": 4, "regular": true}
Give a JSON object with the keys "month" and "days" for February in a leap year. | {"month": "February", "days": 29}
Create a JSON object with the keys "author" and "quote" for the saying "Knowledge is power" by Francis Bacon. | {"author": "Francis Bacon", "quote": "Knowledge is power"}
Produce a JSON object with the keys "device", "battery" and "charging" for a phone at 45% that is charging. | {"device": "phone", "battery": 45, "charging": true}
Return a JSON object with the keys "ingredient" and "grams" for 250 grams of flour. | {"ingredient": "flour", "grams": 250}
Give a JSON object with the keys "sport" and "players" for the number of players per side in football. | {"sport": "football", "players": 11}
Write a JSON object whose key "seasons" lists the four seasons in order, starting with spring. | {"seasons": ["spring", "summer", "autumn", "winter"]}
Output a JSON object with the keys "city", "temperature" and "unit" for 21 degrees Celsius in Madrid. | {"city": "Madrid", "temperature": 21, "unit": "C"}
Make a JSON object with the keys "title", "year" and "director" for the film Quiet Harbour, made in 2019 by Lena Ortiz. | {"title": "Quiet Harbour", "year": 2019, "director": "Lena Ortiz"}
Create a JSON object with the keys "book", "chapter" and "page" for a bookmark in The Long Road at chapter 5, page 87. | {"book": "The Long Road", "chapter": 5, "page": 87}
"""

# task | required word | sentence with {w} | the word the rejected answer uses instead
INCLUDE = """
Write one sentence about the sea. | harbour | Fishing boats rest in the quiet {w} while the sea turns silver at dusk. | bay
Describe a city at night in one sentence. | neon | Streets glow with {w} signs as taxis hum past late-night cafes. | bright
Write a sentence about a morning run. | sunrise | I ran along the river at {w}, breathing in the cool, still air. | dawn
Describe a library in one sentence. | whisper | Readers {w} between tall shelves while afternoon light falls across the tables. | chat
Write a sentence about a garden in spring. | tulips | Rows of {w} sway beside the path, and bees drift from bloom to bloom. | daisies
Describe a winter morning in one sentence. | frost | A thin layer of {w} covers the fields, and every breath turns to mist. | snow
Write one sentence about a cat. | whiskers | The cat twitched its {w} and leapt onto the warm windowsill. | tail
Describe a street market in one sentence. | spices | Stalls piled with {w}, fruit and bread fill the square with colour and noise. | cheese
Write a sentence about friendship. | loyal | A {w} friend shows up when things are hard, not only when they are fun. | good
Describe a storm in one sentence. | thunder | Rain hammered the roofs as {w} rolled across the dark valley. | wind
Write a sentence about coffee. | aroma | The rich {w} of fresh coffee filled the kitchen before anyone was awake. | smell
Describe a mountain hike in one sentence. | summit | After three hours of climbing, we reached the {w} and watched clouds drift below us. | top
Write a sentence about the moon. | crescent | A thin {w} moon hung above the rooftops, pale against the deep blue sky. | silver
Describe a school classroom in one sentence. | chalkboard | Sunlight lit the {w} as students copied the day's lesson into their notebooks. | desks
Write a sentence about learning to cook. | recipe | Following a simple {w} step by step is a great way to start cooking. | guide
Describe a beach holiday in one sentence. | seashells | Children collected {w} along the shore while the tide crept slowly in. | pebbles
Write a sentence about a train journey. | carriage | From the quiet {w}, I watched green hills and small villages roll past. | seat
Describe autumn leaves in one sentence. | crimson | The maple leaves turned {w} and gold before drifting onto the path. | orange
Write a sentence about a birthday party. | balloons | Bright {w} bobbed against the ceiling as everyone sang and cut the cake. | streamers
Describe a forest in one sentence. | moss | Soft green {w} covered the fallen logs beneath the tall, silent pines. | ferns
Write a sentence about a musician. | melody | She hummed a gentle {w} while tuning her old guitar on the porch. | tune
Describe a desert in one sentence. | dunes | Golden {w} stretched to the horizon under a blazing, cloudless sky. | sands
Write a sentence about a lighthouse. | beam | The lighthouse swept its {w} across the waves to guide ships home. | light
Describe a bakery in one sentence. | croissants | Warm {w} and crusty loaves fill the bakery window each morning. | muffins
Write a sentence about the night sky. | constellations | Far from the city lights, we traced {w} across the clear sky. | stars
Describe a river in one sentence. | current | The river's {w} carried fallen leaves past the old stone bridge. | flow
Write a sentence about a rainy day. | puddles | Kids in bright boots jumped in {w} while rain drummed on the umbrellas. | streams
Describe an old house in one sentence. | creaky | The old house had {w} floors and a chimney that whistled in the wind. | wooden
Write a sentence about a football match. | goal | The crowd roared when the striker scored a late {w} in the final minute. | header
Describe a zoo in one sentence. | giraffes | Visitors watched the {w} eating lunch in the warm afternoon sun. | zebras
Write a sentence about a good teacher. | patient | A {w} teacher explains things again without ever making you feel slow. | kind
Describe a snowy morning in one sentence. | silence | A deep {w} settled over the street after a night of heavy snow. | calm
Write a sentence about a bicycle ride. | pedals | She pushed hard on the {w} as her bicycle climbed the steep hill. | handlebars
Describe a picnic in one sentence. | sandwiches | We spread a blanket on the grass and shared {w} and lemonade in the shade. | crisps
Write a sentence about a coral reef. | coral | Bright {w} and tiny fish crowd the warm, shallow waters of the reef. | seaweed
Describe a quiet evening at home in one sentence. | candle | A single {w} flickered on the table as rain tapped against the window. | lamp
Write a sentence about a playful dog. | fetch | The puppy raced across the park to {w} the ball again and again. | chase
Describe a busy kitchen in one sentence. | sizzling | Pans were {w} on every burner as the chefs called out orders. | steaming
Write a sentence about travelling by plane. | runway | The plane rolled down the {w} and lifted gently into the clouds. | tarmac
Describe a sunset in one sentence. | amber | The sky faded from {w} to violet as the sun sank behind the hills. | pink
Write a sentence about an apple tree. | orchard | The oldest tree in the {w} still gives the sweetest apples every autumn. | garden
Describe a castle in one sentence. | turrets | Stone {w} rose above the misty moat of the ancient castle. | walls
Write a sentence about a painter. | canvas | The painter stepped back from the {w} and added one last stroke of blue. | easel
Describe a farm at dawn in one sentence. | rooster | The {w} woke everyone at first light, long before the tractor started. | donkey
Write a sentence about a concert. | encore | The crowd cheered for an {w} until the band walked back on stage. | hour
Describe a rainforest in one sentence. | canopy | Monkeys called from the dense {w} high above the damp forest floor. | branches
Write a sentence about a letter from a friend. | handwritten | Her {w} letter arrived on Friday, full of news and silly drawings. | long
Describe a warm winter drink in one sentence. | cinnamon | Hot apple juice with {w} warms your hands and smells like the holidays. | honey
"""

# task | forbidden word | sentence with {w} | the word the chosen answer uses instead
FORBID = """
Describe a kitten in one sentence. | cute | The kitten was so {w}, curled up asleep in a patch of sunlight. | sweet
Describe the weather today in one sentence. | nice | It is a {w} day, sunny and calm with a light breeze. | lovely
Review a film you enjoyed in one sentence. | good | The acting was really {w}, and the ending surprised everyone in the cinema. | strong
Describe a delicious meal. | tasty | The curry was rich and {w}, with soft rice and fresh coriander on top. | fragrant
Describe a modern library building. | huge | The new library is a {w} glass building that towers over the square. | vast
Describe how you feel after a holiday. | happy | I feel rested and {w} after a week away by the sea. | cheerful
Describe a sports car. | fast | The red sports car is incredibly {w} and roars down the open road. | quick
Describe a difficult exam. | hard | The maths exam was {w}, and most of us needed the full two hours. | tough
Describe a comedy you watched. | funny | The film was so {w} that the whole audience was laughing by the end. | hilarious
Describe a book from your grandmother's shelf. | old | The {w} book had yellowed pages and a cracked leather cover. | worn
Describe a ghost story in one sentence. | scary | The story was truly {w}, with footsteps echoing in an empty house. | chilling
Describe a view from a hilltop. | beautiful | From the hilltop, the valley looked {w} in the soft evening light. | stunning
Describe a quiet village. | small | It is a {w} village with one shop, a church and a duck pond. | tiny
Describe a nurse at the end of a long shift. | tired | After a twelve-hour shift, the nurse felt {w} and headed straight to bed. | exhausted
Describe a winter night. | cold | The night was bitterly {w}, and frost sparkled on every car window. | freezing
Say something positive about a colleague. | great | Maria is a {w} colleague who always shares credit with the team. | generous
Describe a teenager's bedroom. | messy | His bedroom was {w}, with clothes piled on the chair and books on the floor. | cluttered
Describe a rock concert. | loud | The concert was so {w} that my ears were ringing on the way home. | deafening
Describe a museum you visited. | interesting | The museum was {w}, especially the room full of dinosaur skeletons. | fascinating
Describe a bright morning. | sunny | It was a {w} morning, and light poured through the kitchen window. | golden
Describe your lunch today. | quick | I had a {w} lunch of soup and bread before the afternoon meeting. | simple
Describe a mansion. | expensive | The mansion was full of {w} art and had a pool in the garden. | valuable
Describe the queue at a post office. | slow | The queue at the post office was painfully {w} this morning. | long
Describe a song that makes you cry. | sad | The song is {w} and quiet, about a letter that never arrived. | mournful
Describe a kitchen after a deep clean. | clean | After an hour of scrubbing, the kitchen looked {w} and smelled of lemon. | spotless
Describe a cup of espresso. | strong | This coffee is so {w} that one cup keeps me awake all afternoon. | bold
Describe a neighbour's dog. | friendly | The dog is {w} and wags its tail at everyone who walks past. | gentle
Describe a city street at rush hour. | busy | The street was {w}, with buses, bikes and shoppers squeezing past each other. | crowded
Describe a simple pasta recipe. | easy | This pasta recipe is {w} and takes only fifteen minutes to make. | quick
Describe an oak tree. | tall | A {w} oak stands at the edge of the field, older than the farmhouse. | towering
Describe a long meeting. | boring | The meeting was {w} and went on for two hours without a decision. | dull
Describe a summer heatwave. | hot | It was so {w} that the tarmac felt soft under our feet. | sweltering
Describe a forest at dusk. | dark | The forest was {w} and still, with only a little light between the trees. | gloomy
Describe a cottage garden. | pretty | Her garden is {w}, full of roses, lavender and climbing sweet peas. | charming
Describe your phone. | new | My {w} phone has a sharp screen and a battery that lasts two days. | latest
Describe a clever student. | smart | She is a {w} student who asks questions nobody else thinks of. | bright
Describe a classroom before the lesson starts. | noisy | The classroom was {w} until the teacher raised her hand for silence. | rowdy
Describe a day when everything went wrong. | bad | It was a {w} day: I missed the bus and spilled coffee on my shirt. | rough
Describe a wet afternoon. | rain | The afternoon was grey, and heavy {w} kept everyone indoors. | showers
Describe a caramel cake. | sweet | The cake was rich and very {w}, with a layer of sticky caramel. | sugary
Describe a mountain lake at dawn. | calm | The lake was {w} and glassy, reflecting the mountains perfectly. | still
Describe a trip to visit relatives. | long | It was a {w} journey, with three trains and a late-night ferry. | lengthy
Describe your favourite armchair. | comfortable | The armchair is so {w} that I often fall asleep in it. | cosy
Describe a dance performance. | amazing | The dancer gave an {w} performance that earned a standing ovation. | incredible
Describe a car after a muddy drive. | dirty | The car was {w}, covered in mud from the country lanes. | filthy
Describe a summer salad. | fresh | The salad was {w} and crisp, with cucumber, mint and lemon. | light
Describe a firefighter at work. | brave | The {w} firefighter carried a child out of the smoking building. | fearless
Describe a dog that is very large. | big | Their {w} dog takes up the whole sofa when he lies down. | enormous
"""
