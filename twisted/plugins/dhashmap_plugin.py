from twisted.application.service import ServiceMaker

dhashmap = ServiceMaker("dhashmap", "twisted_dhm.tap", "A Dynamo-style distributed key-value store.", "dhashmap")
